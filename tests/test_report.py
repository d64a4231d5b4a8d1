"""Run reports and multi-seed comparison on hand-made run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.config import Config, dump
from longtail.data.splits import lt_counts
from longtail.errors import LongtailError
from longtail.metrics import evaluate_logits
from longtail.report import compare_runs, load_summary, mean_std, method_label, write_report

COUNTS = lt_counts(5000, 10, 100)  # 5000 ... 50: 8 Many, 2 Medium, no Few class
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_run(root: Path, name: str, seed: int = 0, method: str = "ce", epochs: int = 5,
             metrics: bool = True, **overrides: Any) -> Path:
    """A finished run folder as the trainer writes it, with metrics computed from random logits."""
    run = root / name
    run.mkdir(parents=True)
    cfg = Config(name=name)
    cfg.train.seed, cfg.train.epochs = seed, epochs
    (run / "config.yaml").write_text(dump(cfg))
    g = torch.Generator().manual_seed(100 + seed + 7 * len(method))
    targets = torch.arange(10).repeat(20)
    logits = torch.randn(200, 10, generator=g)
    logits[torch.arange(200), targets] += torch.linspace(2.5, 0.0, 10)[targets]  # head classes easier
    m = evaluate_logits(logits, targets, COUNTS)
    summary = {
        "name": name, "dataset": "cifar10", "imbalance": 100.0, "method": method, "backbone": "resnet32",
        "epochs": epochs, "batch_size": 128, "augment": "standard", "seed": seed, "selection": "last",
        "top1": m["top1"], "top5": m["top5"], "many": m["many"], "medium": m["medium"], "few": m["few"],
        "per_class": m["per_class"], "ece": m["ece"], "calibration": m["calibration"],
        "train_counts": COUNTS, "class_names": NAMES, "shots": {"many": 8, "medium": 2, "few": 0},
        "wall_seconds": 123.4, "device": "cpu", "torch": torch.__version__, "commit": "abc1234",
        "data_verified": True, "posthoc_tau": 0.0, "steps": 400,
    }
    summary.update(overrides)
    (run / "summary.json").write_text(json.dumps(summary))
    if metrics:
        lines = []
        for e in range(1, epochs + 1):
            rec = {"epoch": e, "step": 80 * e, "lr": 0.1 * e / epochs, "loss": 2.3 / e, "train_acc": 10.0 * e,
                   "seconds": 1.5, "images_per_s": 9000.0, "loss_ce": 2.3 / e}
            if e % 2 == 1:
                rec.update(top1=8.0 * e, many=10.0 * e, medium=5.0 * e, few=None, ece=3.0)
            lines.append(json.dumps(rec))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 5000, f"{path.name} is suspiciously small"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 300 and im.size[1] >= 300
        im.load()
        # not a blank canvas: at least a few distinct colours were drawn
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10


# ---------------------------------------------------------------------------------------------------
# write_report


def test_write_report_files_and_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path, "cifar10_r100_ce_s0")
    s = json.loads((run / "summary.json").read_text())
    path = write_report(run)
    assert path == run / "report" / "report.md"
    for png in ("per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png"):
        _check_png(run / "report" / png)

    with (run / "report" / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == NAMES
    assert [int(r["train_count"]) for r in rows] == COUNTS
    assert [r["group"] for r in rows] == ["many"] * 8 + ["medium"] * 2
    np.testing.assert_allclose([float(r["accuracy"]) for r in rows], s["per_class"], atol=1e-4)

    md = path.read_text()
    assert "# Run report: cifar10_r100_ce_s0" in md
    results = md.split("## Results")[1].split("\n\n")[1]  # the results table
    values = results.splitlines()[2].strip("| ").split(" | ")
    assert values == [f"{s['top1']:.2f}", f"{s['many']:.2f}", f"{s['medium']:.2f}", "—",
                      f"{s['top5']:.2f}", f"{s['ece']:.2f}"]
    assert "Few (0 classes)" in results
    for tag in ("| dataset | cifar10 |", "| imbalance ρ | 100 |", "| backbone | resnet32 |", "| method | ce |",
                "| epochs | 5 |", "| batch size | 128 |", "| augmentation | standard |", "| selection rule | last |",
                "| seed | 0 |", "| commit | abc1234 |", "| data verified | yes |", "| split generator | exp, split seed 0 |"):
        assert tag in md, tag
    for png in ("per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png"):
        assert f"]({png})" in md
    assert f"| 9 | truck | 50 | medium | {s['per_class'][9]:.2f} |" in md


def test_report_absent_class_and_no_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", metrics=False)
    s = json.loads((run / "summary.json").read_text())
    s["per_class"][9] = None  # class absent from the test set
    (run / "summary.json").write_text(json.dumps(s))
    (run / "config.yaml").unlink()
    (run / "report").mkdir()
    (run / "report" / "curves.png").write_bytes(b"stale")  # from an earlier report
    md = write_report(run).read_text()
    assert not (run / "report" / "curves.png").exists()
    assert "curves.png" not in md and "split generator" not in md
    assert "| 9 | truck | 50 | medium | — |" in md
    with (run / "report" / "per_class.csv").open() as f:
        assert list(csv.DictReader(f))[9]["accuracy"] == ""
    _check_png(run / "report" / "per_class_vs_count.png")


def test_report_tolerates_cut_off_last_metrics_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 6, "lo')
    write_report(run)
    _check_png(run / "report" / "curves.png")


def test_bbl_is_labelled_reconstruction(tmp_path: Path) -> None:
    md = write_report(make_run(tmp_path, "b", method="bbl", metrics=False)).read_text()
    assert "| method | BBL (reconstruction) |" in md
    assert method_label("bbl_drw") == "BBL (reconstruction): bbl_drw"
    assert method_label("ldam_drw") == "ldam_drw"


def test_bad_run_dirs(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LongtailError, match="has no summary.json: is it a finished run"):
        write_report(tmp_path / "empty")

    run = make_run(tmp_path, "bad")
    (run / "summary.json").write_text('{"top1": 5')
    with pytest.raises(LongtailError, match="not valid JSON"):
        write_report(run)
    (run / "summary.json").write_text(json.dumps({"top1": None, "per_class": [], "train_counts": []}))
    with pytest.raises(LongtailError, match="lacks top1: the run bad did not finish"):
        write_report(run)
    (run / "summary.json").write_text(json.dumps({"top1": 50.0, "per_class": [1.0], "train_counts": [1, 2]}))
    with pytest.raises(LongtailError, match="same length"):
        write_report(run)

    run = make_run(tmp_path, "bad_metrics")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LongtailError, match="metrics.jsonl line 2 is not valid JSON"):
        write_report(run)

    run = make_run(tmp_path, "bad_config")
    (run / "config.yaml").write_text("data: [unclosed")
    with pytest.raises(LongtailError, match="config.yaml is not valid YAML"):
        write_report(run)


# ---------------------------------------------------------------------------------------------------
# compare_runs


def _rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    return [ln.strip("| ").split(" | ") for ln in lines[2:]]  # skip the header and the rule


def test_compare_mean_sample_std_and_per_seed(tmp_path: Path) -> None:
    a = [make_run(tmp_path, f"ce_s{s}", seed=s) for s in (2, 0, 1)]
    b = make_run(tmp_path, "la_s0", seed=0, method="la", posthoc_tau=1.0, epochs=5)
    table = compare_runs([*a, b])
    rows = _rows(table)
    assert len(rows) == 2
    sums = {s: load_summary(d) for s, d in zip((2, 0, 1), a)}
    ce = rows[0]
    assert ce[0] == "cifar10 ρ=100 · ce · resnet32 · 5 ep · bs 128 · standard · last"
    assert ce[1] == "3"
    for col, key in zip(ce[2:7], ("top1", "many", "medium", "few", "ece")):
        if key == "few":
            assert col == "—"
            continue
        v = np.array([sums[s][key] for s in (0, 1, 2)])
        assert col == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
    assert ce[7] == ", ".join(f"s{s}: {sums[s]['top1']:.2f}" for s in (0, 1, 2))
    la = rows[1]
    assert la[0].endswith("· τ=1") and la[1] == "1"
    assert la[2] == f"{load_summary(b)['top1']:.2f} ± —"
    assert "abc1234" in table


def test_compare_groups_ignore_only_the_seed(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "x0", seed=0), make_run(tmp_path, "x1", seed=1, batch_size=256),
            make_run(tmp_path, "x2", seed=2, imbalance=100)]  # int 100 == float 100.0
    rows = _rows(compare_runs(runs))
    assert [r[1] for r in rows] == ["2", "1"]
    assert "bs 256" in rows[1][0]


def test_compare_errors(tmp_path: Path) -> None:
    with pytest.raises(LongtailError, match="at least one run folder"):
        compare_runs([])
    ok = make_run(tmp_path, "ok")
    unfinished = tmp_path / "half_done"
    unfinished.mkdir()
    with pytest.raises(LongtailError, match="half_done has no summary.json"):
        compare_runs([ok, unfinished])
    twin = make_run(tmp_path, "ok_again", seed=0)
    with pytest.raises(LongtailError, match="same configuration and seed 0"):
        compare_runs([ok, twin])


def test_mean_std_formats() -> None:
    assert mean_std([None, None]) == "—"
    assert mean_std([70.0]) == "70.00 ± —"
    vals = [70.1, 70.5, 69.2]
    assert mean_std(vals) == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    assert mean_std([1.0, None, 3.0]) == f"2.00 ± {np.std([1.0, 3.0], ddof=1):.2f} (2 of 3)"
