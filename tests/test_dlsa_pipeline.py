"""The DLSA stage loop end to end on small synthetic feature caches (METHODS §4.1, §4.9)."""

import json
import math

import h5py
import numpy as np
import pytest
import yaml

from longtail.stage2.dlsa import run_dlsa
from longtail.stage2.features import read_feature_cache
from longtail.errors import DataError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

TINY = ["num_clusters=8", "flow_epochs=2", "flow_batch=64", "cls_epochs=4", "cls_batch=32", "eval_every=2"]
N_PER = (120, 60, 30, 15, 8)


def make_cache(root, n_per=N_PER, d=8, seed=0, val=True, test_per=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(n_per), d))
    parts = {"train": n_per, "test": [test_per] * len(n_per)}
    if val:
        parts["val"] = [6] * len(n_per)
    root.mkdir(parents=True, exist_ok=True)
    for split, ns in parts.items():
        y = np.concatenate([np.full(n, c) for c, n in enumerate(ns)]).astype(np.int64)
        x = (centres[y] + rng.normal(0, 1, (len(y), d))).astype(np.float32)
        with h5py.File(root / f"features_{split}.h5", "w") as f:
            f["features"], f["labels"] = x, y
    meta = {"num_classes": len(n_per), "class_counts": list(n_per), "dataset": "synthetic", "backbone": "none"}
    (root / "features.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("feat"))


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    path = run_dlsa(cache, out, overrides=TINY, device="cpu", echo=lambda s: None)
    return out, json.loads(path.read_text())


def _load_pred(out):
    with np.load(out / "predictions.npz") as z:
        return {k: z[k] for k in z.files}


def test_end_to_end_summary_and_partition(full_run):
    out, s = full_run
    for key in ("top1", "top5", "many", "medium", "few", "per_class", "ece", "stages", "method", "seed",
                "wall_seconds", "device", "torch", "commit", "selection", "feature_source"):
        assert key in s, key
    assert s["method"] == "dlsa" and s["dataset"] == "synthetic" and s["selection"] == "best_val"
    stages = s["stages"]
    assert [e["kind"] for e in stages] == ["cac", "cac", "cac", "regular"]
    n_test = 20 * len(N_PER)
    assert sum(e["test_count"] for e in stages) == n_test
    # train fractions: |A| − ⌊0.7·|A|⌋ per stage (≈ 30 / 21 / 14.7 / 34.3 %)
    active, expected = sum(N_PER), []
    for _ in range(3):
        expected.append(active - math.floor(0.7 * active))
        active -= expected[-1]
    expected.append(active)
    assert [e["train_count"] for e in stages] == expected
    # the owner of every test sample is recorded once, and the owners match the stage counts
    pred = _load_pred(out)
    assert pred["owner"].min() >= 0 and (pred["pred"] >= 0).all()
    owners = [int((pred["owner"] == (e["stage"] if e["kind"] == "cac" else 0)).sum()) for e in stages]
    assert owners == [e["test_count"] for e in stages]
    # the summary's top-1 is the accuracy of the assembled predictions
    assert abs(s["top1"] - 100 * float((pred["pred"] == pred["labels"]).mean())) < 1e-9
    weighted = sum(e["accuracy"] * e["test_count"] for e in stages if e["test_count"]) / n_test
    assert abs(weighted - s["top1"]) < 1e-9
    for e in stages[:3]:
        assert 0 <= e["nmi"] <= 1 and 0 < e["purity"] <= 1
        assert set(e["filtered_share"]) == {"many", "medium", "few"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"flow", "cac", "regular"}
    assert yaml.safe_load((out / "config.yaml").read_text())["num_clusters"] == 8


def test_determinism(cache, full_run, tmp_path):
    out, s = full_run
    again = json.loads(run_dlsa(cache, tmp_path, overrides=TINY, device="cpu", echo=lambda s: None).read_text())
    a, b = _load_pred(out), _load_pred(tmp_path)
    assert np.array_equal(a["pred"], b["pred"]) and np.array_equal(a["owner"], b["owner"])
    assert again["stages"] == s["stages"]


def test_rho_zero_and_depth_zero_reduce_to_the_regular_classifier(cache, tmp_path):
    runs = {}
    for name, extra in {"rho0": ["llh_proportion=0"], "d0": ["max_depth=0"],
                        "subset": ["llh_proportion=0", "regular_bsm_counts=subset"]}.items():
        path = run_dlsa(cache, tmp_path / name, overrides=TINY + extra, device="cpu", echo=lambda s: None)
        runs[name] = (json.loads(path.read_text()), _load_pred(tmp_path / name))
    for name in ("rho0", "d0", "subset"):
        s, p = runs[name]
        assert [e["kind"] for e in s["stages"]] == ["regular"]
        assert s["stages"][0]["train_count"] == sum(N_PER)
        assert np.array_equal(p["pred"], runs["d0"][1]["pred"])
        assert s["top1"] == runs["d0"][0]["top1"]


def test_rho_one_filters_everything_at_the_first_stage(cache, tmp_path):
    s = json.loads(run_dlsa(cache, tmp_path, overrides=TINY + ["llh_proportion=1"], device="cpu",
                            echo=lambda s: None).read_text())
    assert [(e["kind"], e["train_count"], e["test_count"]) for e in s["stages"]] == [
        ("cac", sum(N_PER), 100), ("regular", 0, 0)]


def test_without_val_latent_inputs_and_active_priors(tmp_path):
    root = make_cache(tmp_path / "feat", val=False, seed=1)
    over = TINY + ["max_depth=1", "z_input=latent", "prior_source=active"]
    s = json.loads(run_dlsa(root, tmp_path / "run", overrides=over, device="cpu", echo=lambda s: None).read_text())
    assert s["selection"] == "last"
    assert sum(e["test_count"] for e in s["stages"]) == 100


def _rewrite(root, split, features=None, labels=None):
    path = root / f"features_{split}.h5"
    with h5py.File(path, "r") as f:
        x, y = f["features"][...], f["labels"][...]
    with h5py.File(path, "w") as f:
        f["features"] = x if features is None else features(x)
        f["labels"] = y if labels is None else labels(y)


def test_input_validation(tmp_path):
    root = make_cache(tmp_path / "a")
    assert read_feature_cache(root).val is not None
    _rewrite(root, "test", features=lambda x: x[:, :5])
    with pytest.raises(DataError, match="dimension 5 but features_train.h5 has 8"):
        read_feature_cache(root)
    root = make_cache(tmp_path / "b")
    _rewrite(root, "val", labels=lambda y: y + 3)
    with pytest.raises(DataError, match=r"labels from 3 to 7, outside \[0, 5\)"):
        read_feature_cache(root)
    root = make_cache(tmp_path / "c")
    _rewrite(root, "test", features=lambda x: x[:0], labels=lambda y: y[:0])
    with pytest.raises(DataError, match="features_test.h5 holds no samples"):
        read_feature_cache(root)
    root = make_cache(tmp_path / "d")
    (root / "features_test.h5").unlink()
    with pytest.raises(DataError, match="the test split is required"):
        read_feature_cache(root)
    root = make_cache(tmp_path / "e")
    meta = json.loads((root / "features.json").read_text())
    meta["class_counts"][0] += 1
    (root / "features.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="class_counts disagree"):
        read_feature_cache(root)
    with pytest.raises(DataError, match="features.json not found"):
        read_feature_cache(tmp_path / "missing")
