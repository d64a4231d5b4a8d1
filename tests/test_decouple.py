"""Decoupled stage 2 (cRT, LWS, τ-norm, post-hoc LA) on cached features of a tiny digits run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from longtail.stage2 import decouple as D
from longtail.engine.run import evaluate_run
from longtail.errors import ConfigError, DataError, LongtailError
from longtail.stage2.features import file_sha256, holdout_indices, read_features

from test_features import source_features, source_run
from test_train import quiet

FAST = ["epochs=2", "batch_size=128"]
METRIC_KEYS = {"top1", "top5", "many", "medium", "few", "per_class", "ece", "calibration", "train_counts",
               "class_names", "shots", "dataset", "imbalance", "method", "backbone", "epochs", "seed", "selection",
               "wall_seconds", "device", "torch", "commit", "data_verified", "stage2"}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return source_run(tmp_path_factory)


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    return source_features(tmp_path_factory)


@pytest.fixture(scope="module")
def src_sha(src) -> str:
    return file_sha256(src / "model.safetensors")


@pytest.fixture(scope="module")
def runs(src, feats, src_sha, tmp_path_factory) -> dict[str, Path]:
    """Every method once, on the cached features."""
    base = tmp_path_factory.mktemp("stage2")
    return {m: D.run_decouple(src, m, base / m, features_dir=feats, overrides=FAST, device="cpu", echo=quiet)
            for m in D.METHODS}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def stage1(src: Path) -> tuple[torch.Tensor, torch.Tensor]:
    sd = load_file(str(src / "model.safetensors"))
    return sd["classifier.weight"], sd["classifier.bias"]


@pytest.mark.parametrize("method", D.METHODS)
def test_each_method_writes_a_run_directory(runs, src, method):
    s = summary(runs[method])
    assert METRIC_KEYS <= set(s)
    assert s["method"] == f"ce+{method}" and s["dataset"] == "digits" and s["num_test"] == 500
    st = s["stage2"]
    assert st["method"] == method and Path(st["source_run"]) == src.resolve()
    assert {"tau", "tau_grid", "selected_on", "epochs", "k"} <= set(st)
    lines = (runs[method] / "metrics.jsonl").read_text().splitlines() if method in ("crt", "lws") else []
    assert len(lines) == (2 if method in ("crt", "lws") else 0)
    if method in ("tau_norm", "posthoc_la"):
        assert st["selected_on"] == "train_holdout" and st["tau"] in st["tau_grid"]
        assert len(st["tau_grid"]) == 21 and st["tau_grid"][-1] == 2.0
        assert st["tau"] == st["tau_grid"][int(np.argmax(st["tau_scores"]))]


def test_crt_uses_the_class_aware_sampler(runs):
    counts = np.array(summary(runs["crt"])["train_counts"])
    for line in (runs["crt"] / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["samples"] == counts.max() * len(counts)  # one sampler-epoch = n_max * C
        assert rec["class_samples_max"] - rec["class_samples_min"] <= 4  # uniform within ±k
    lrs = [json.loads(x)["lr"] for x in (runs["crt"] / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.2, 0.1])  # cosine per epoch, 2 epochs


def test_backbone_is_bitwise_unchanged(runs, src, src_sha):
    assert file_sha256(src / "model.safetensors") == src_sha
    ref = load_file(str(src / "model.safetensors"))
    for m, run in runs.items():
        new = load_file(str(run / "model.safetensors"))
        for k, v in ref.items():
            if not k.startswith("classifier."):
                assert torch.equal(new[k], v), f"{m}: {k} changed"


def test_lws_at_init_reproduces_stage1_logits(src, feats):
    w, b = stage1(src)
    x = torch.from_numpy(read_features(feats, "test")[0][:50])
    head = D.LWSHead(w, b)
    torch.testing.assert_close(head(x), x @ w.T + b)
    fw, fb = head.folded()
    torch.testing.assert_close(F.linear(x, fw, fb), x @ w.T + b)


def test_lws_folds_scales_into_the_classifier(runs, src):
    w, b = stage1(src)
    f = torch.tensor(summary(runs["lws"])["stage2"]["scales"])
    new = load_file(str(runs["lws"] / "model.safetensors"))
    assert not torch.allclose(f, torch.ones_like(f))  # the scales were trained
    torch.testing.assert_close(new["classifier.weight"], f[:, None] * w)
    torch.testing.assert_close(new["classifier.bias"], f * b)


def test_tau_norm_invariants(src, feats):
    w, _ = stage1(src)
    x = torch.from_numpy(read_features(feats, "test")[0][:50])
    torch.testing.assert_close(F.linear(x, D.tau_normalize(w, 0.0)), x @ w.T)  # τ = 0: no bias, same W
    torch.testing.assert_close(D.tau_normalize(w, 1.0).norm(dim=1), torch.ones(w.shape[0]))
    half = D.tau_normalize(w, 0.5)
    torch.testing.assert_close(half, w / w.norm(dim=1, keepdim=True).sqrt())


def test_posthoc_la_tau0_is_plain_argmax_and_matches_stage1(src, feats, tmp_path):
    out = D.run_decouple(src, "posthoc_la", tmp_path / "p0", features_dir=feats, overrides=["tau=0"], device="cpu",
                         echo=quiet)
    s, s1 = summary(out), summary(src)
    assert s["stage2"]["selected_on"] == "fixed" and s["stage2"]["tau"] == 0.0
    # features + stage-1 head on cached features == stage-1 evaluation on images
    assert s["top1"] == pytest.approx(s1["top1"]) and s["per_class"] == pytest.approx(s1["per_class"])


def test_tau_methods_fold_into_an_evaluable_run(runs):
    for m in ("tau_norm", "posthoc_la"):  # LWS folding is checked numerically above
        got = evaluate_run(runs[m], [], echo=quiet)
        assert got["agrees_with_summary"], m
        if m == "tau_norm":
            assert torch.count_nonzero(load_file(str(runs[m] / "model.safetensors"))["classifier.bias"]) == 0


def test_tau_is_selected_before_test_is_read(src, feats, tmp_path, monkeypatch):
    import longtail.stage2.features as feat_mod

    events: list[tuple[str, int]] = []
    real_load, real_select = feat_mod.load_feature_splits, D.select_tau

    def load(d, splits, num_classes=None):
        events.append(("read:" + ",".join(splits), 0))
        return real_load(d, splits, num_classes)

    def select(make, labels, grid):
        events.append(("select", len(labels)))
        return real_select(make, labels, grid)

    monkeypatch.setattr(feat_mod, "load_feature_splits", load)
    monkeypatch.setattr(D, "select_tau", select)
    D.run_decouple(src, "tau_norm", tmp_path / "t", features_dir=feats, device="cpu", echo=quiet)
    names = [e[0] for e in events]
    assert names == ["read:train", "select", "read:test"]
    y = read_features(feats, "train")[1]
    assert events[1][1] == len(holdout_indices(y, 0.1, 0)[1])  # selected on the train hold-out, not test


def test_extracts_features_when_none_are_given(src, tmp_path):
    out = D.run_decouple(src, "crt", tmp_path / "c", overrides=["epochs=1", "batch_size=256"], device="cpu",
                         echo=quiet)
    assert (out / "features" / "features_train.h5").is_file()
    assert json.loads((out / "features" / "features.json").read_text())["holdout"]["fraction"] == 0.1
    assert summary(out)["stage2"]["epochs"] == 1
    assert yaml.safe_load((out / "decouple.yaml").read_text())["epochs"] == 1


def test_bad_inputs(src, feats, tmp_path, runs):
    with pytest.raises(ConfigError, match="must be one of crt, lws, tau_norm, posthoc_la .got 'crtt'"):
        D.run_decouple(src, "crtt", tmp_path / "x", features_dir=feats, echo=quiet)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        D.run_decouple(src, "crt", tmp_path / "x", features_dir=feats, overrides=["epoch=3"], echo=quiet)
    with pytest.raises(ConfigError, match=r"k must be >= 1 \(got 0\)"):
        D.run_decouple(src, "crt", tmp_path / "x", features_dir=feats, overrides=["k=0"], echo=quiet)
    with pytest.raises(LongtailError, match="already holds a run"):
        D.run_decouple(src, "crt", runs["crt"], features_dir=feats, echo=quiet)
    with pytest.raises(LongtailError, match="not a finished longtail run"):
        D.run_decouple(tmp_path, "crt", tmp_path / "x", features_dir=feats, echo=quiet)
    # features of another model
    other = tmp_path / "feats"
    shutil.copytree(feats, other)
    info = json.loads((other / "features.json").read_text())
    info["model_sha256"] = "0" * 64
    (other / "features.json").write_text(json.dumps(info))
    with pytest.raises(LongtailError, match="extracted from another model"):
        D.run_decouple(src, "crt", tmp_path / "x", features_dir=other, device="cpu", echo=quiet)


@pytest.mark.parametrize("method", ["lws", "tau_norm"])
def test_cosine_head_is_refused_for_weight_methods(src, feats, tmp_path, method):
    cos = tmp_path / "cos"
    shutil.copytree(src, cos)
    cfg = yaml.safe_load((cos / "config.yaml").read_text())
    cfg["model"]["head"] = "cosine"
    (cos / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(LongtailError, match=f"{method} needs a linear stage-1 head"):
        D.run_decouple(cos, method, tmp_path / "x", features_dir=feats, echo=quiet)


def test_tau_is_selected_on_val_when_the_dataset_has_one(src, feats, tmp_path, monkeypatch):
    from longtail.stage2.features import write_features

    withval = tmp_path / "feats"
    shutil.copytree(feats, withval)
    x, y = read_features(feats, "train")
    write_features(withval / "features_val.h5", x[::3], y[::3])
    info = json.loads((withval / "features.json").read_text())
    info["has_val"] = True
    (withval / "features.json").write_text(json.dumps(info))
    seen: list[int] = []
    real = D.select_tau

    def select(make, labels, grid):
        seen.append(len(labels))
        return real(make, labels, grid)

    monkeypatch.setattr(D, "select_tau", select)
    s = summary(D.run_decouple(src, "posthoc_la", tmp_path / "v", features_dir=withval, device="cpu", echo=quiet))
    assert s["stage2"]["selected_on"] == "val" and s["selection"] == "best_val"
    assert seen == [len(y[::3])]
    (withval / "features_val.h5").unlink()  # a val split was announced but not extracted: no silent fallback
    with pytest.raises(DataError, match="features_val.h5 not found: run 'longtail extract"):
        D.run_decouple(src, "posthoc_la", tmp_path / "v2", features_dir=withval, device="cpu", echo=quiet)


def test_images_mode_keeps_the_backbone_frozen(src, feats, tmp_path, src_sha, method="crt"):
    out = D.run_decouple(src, method, tmp_path / method, features_dir=feats, device="cpu", echo=quiet,
                         overrides=["epochs=1", "batch_size=256", "source=images"])
    s = summary(out)
    assert s["stage2"]["source"] == "images"
    rec = json.loads((out / "metrics.jsonl").read_text())
    assert rec["samples"] == 1200 and rec["class_samples_max"] - rec["class_samples_min"] <= 4
    # the saved backbone is the live network after stage 2: BN running stats did not move
    ref, new = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any("running_mean" in k for k in ref)
    for k, v in ref.items():
        if not k.startswith("classifier."):
            assert torch.equal(new[k], v), k
    assert file_sha256(src / "model.safetensors") == src_sha
