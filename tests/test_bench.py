"""Throughput benchmark: both pipelines train, alternate, and report consistent rates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longtail.bench import format_bench, run_bench
from longtail.errors import LongtailError

TINY = {"data": {"name": "digits", "imbalance": 10}, "model": {"backbone": "resnet8", "width": 8, "head": "cosine"},
        "method": {"name": "bcl", "proj_hidden": 32, "proj_dim": 16},
        "optim": {"lr": 0.05, "warmup_epochs": 0, "schedule": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "progress": False}, "device": "cpu"}


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_bench_reports_both_pipelines(tmp_path):
    # bcl: three views, so the reference must build one torchvision pipeline per view for forward_batch to work
    cfg = write(tmp_path, TINY)
    r = run_bench(cfg, steps=3, warmup=1, workers=0, device="cpu")
    for key in ("device", "torch", "config", "ours_images_per_s", "reference_images_per_s", "ratio", "steps",
                "batch_size", "method", "dataset", "date", "commit"):
        assert key in r, key
    assert r["device"] == "cpu" and r["method"] == "bcl" and r["dataset"] == "digits"
    assert r["steps"] == 3 and r["batch_size"] == 64
    assert r["config"]["path"] == str(cfg) and r["config"]["resolved"]["method"]["name"] == "bcl"
    # 4 batches (1 warm-up + 3 timed) fit in the first epoch of ~480 images: all full, only timed ones counted
    assert r["ours_images"] == r["reference_images"] == 3 * 64
    assert r["ours_images_per_s"] == pytest.approx(r["ours_images"] / r["ours_seconds"])
    assert r["reference_images_per_s"] == pytest.approx(r["reference_images"] / r["reference_seconds"])
    assert r["ours_images_per_s"] > 0 and r["reference_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["ours_images_per_s"] / r["reference_images_per_s"])
    assert "ratio" in format_bench(r)


def test_bench_overrides_apply(tmp_path):
    # method.name=ce from the command line: the file may set no parameter that only bcl has
    r = run_bench(write(tmp_path, dict(TINY, method={"name": "bcl"})), steps=1, warmup=0, workers=0, device="cpu",
                  overrides=["method.name=ce", "model.head=linear", "train.batch_size=32"])
    assert r["method"] == "ce" and r["batch_size"] == 32 and r["ours_images"] == r["reference_images"] == 32


def test_bench_rejects_list_file_dataset(tmp_path):
    data = dict(TINY, data={"name": "imagenet_lt", "train_list": "train.txt", "test_list": "test.txt",
                            "num_classes": 1000})
    with pytest.raises(LongtailError, match="in-memory dataset.*imagenet_lt"):
        run_bench(write(tmp_path, data), steps=1, warmup=0, workers=0, device="cpu")


def test_bench_rejects_loader_source(tmp_path):
    with pytest.raises(LongtailError, match="data.source=loader"):
        run_bench(write(tmp_path, TINY), steps=1, workers=0, device="cpu", overrides=["data.source=loader"])


@pytest.mark.parametrize("kw", [{"steps": 0}, {"warmup": -1}, {"workers": -2}])
def test_bench_rejects_bad_counts(tmp_path, kw):
    with pytest.raises(LongtailError, match="steps >= 1"):
        run_bench(write(tmp_path, TINY), device="cpu", **kw)


def test_bench_missing_config(tmp_path):
    with pytest.raises(LongtailError, match="not found"):
        run_bench(tmp_path / "nope.yaml", device="cpu")


def test_bench_is_fair_by_default(tmp_path, monkeypatch):
    """The reference gets one worker per core unless told otherwise, both pipelines run under the training's
    global settings, and the process's settings are restored afterwards."""
    import torch

    from longtail import bench

    monkeypatch.setattr(bench, "default_workers", lambda: 0)  # stands for "the machine's cores" here
    seen = {}
    import longtail.engine.devices as R

    orig = R.seed_everything

    def spy(seed, deterministic, device):
        seen["args"] = (seed, deterministic, device.type)
        orig(seed, deterministic, device)

    monkeypatch.setattr(R, "seed_everything", spy)
    before = torch.are_deterministic_algorithms_enabled()
    r = run_bench(write(tmp_path, TINY), steps=1, warmup=0, device="cpu", overrides=["train.deterministic=true"])
    assert r["workers"] == 0 and seen["args"] == (0, True, "cpu")
    assert torch.are_deterministic_algorithms_enabled() == before
    assert r["cudnn_benchmark"] is False and r["pin_memory"] is False


def test_default_workers_is_the_usable_cores():
    import os

    from longtail.bench import default_workers

    assert default_workers() == len(os.sched_getaffinity(0)) >= 1
