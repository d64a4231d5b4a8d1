"""Feature cache: HDF5 round trip, extraction from a finished run, train hold-out, bad inputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail import config as C
from longtail.data.build import build_dataset
from longtail.errors import DataError, LongtailError
from longtail.stage2.features import (extract_features, holdout_indices, load_feature_splits, read_features, read_info,
                               write_features)
from longtail.methods import create_method

from test_train import quiet, tiny_cfg

_CACHE: dict[str, Path] = {}


def source_run(tmp_path_factory) -> Path:
    """One tiny finished digits run (3 steps), shared by this module and test_decouple."""
    if "run" not in _CACHE:
        from longtail.engine.run import train

        out = tmp_path_factory.mktemp("source") / "run"
        train(tiny_cfg(**{"train.epochs": 1, "train.max_steps": 3}), out=str(out), echo=quiet)
        _CACHE["run"] = out
    return _CACHE["run"]


def source_features(tmp_path_factory) -> Path:
    """Train and test features of :func:`source_run`, written in batches of 64 (several chunks)."""
    if "features" not in _CACHE:
        out = tmp_path_factory.mktemp("features")
        extract_features(source_run(tmp_path_factory), out, batch_size=64, device="cpu", holdout_fraction=0.1)
        _CACHE["features"] = out
    return _CACHE["features"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return source_run(tmp_path_factory)


@pytest.fixture(scope="module")
def feat_dir(tmp_path_factory) -> Path:
    return source_features(tmp_path_factory)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)
    write_features(tmp_path / "features_train.h5", x, y, backbone="toy")
    rx, ry = read_features(tmp_path, "train")
    assert rx.dtype == np.float32 and ry.dtype == np.int64
    np.testing.assert_array_equal(rx, x.astype(np.float32))
    np.testing.assert_array_equal(ry, y)
    with h5py.File(tmp_path / "features_train.h5", "r") as f:
        assert f.attrs["backbone"] == "toy"


def test_write_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(DataError, match=r"features must be \[N, D\]"):
        write_features(tmp_path / "features_train.h5", np.zeros((3, 2)), np.zeros(4))


def _reference_features(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """forward_features on the normalised, un-augmented train images, built independently."""
    cfg = C.load(run / "config.yaml")
    ds = build_dataset(cfg.data)
    net = create_method(cfg, ds.train_counts).build_network(ds.num_classes, ds.in_channels)
    net.load_state_dict(load_file(str(run / "model.safetensors")))
    net.eval()
    x = torch.from_numpy(ds.train.images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(ds.mean)[None, :, None, None], torch.tensor(ds.std)[None, :, None, None]
    with torch.no_grad():
        h = net.forward_features((x - mean) / std)
    return h.numpy(), ds.train.labels


def test_extract_matches_forward_features_on_eval_view(run_dir, feat_dir):
    ref_x, ref_y = _reference_features(run_dir)
    x, y = read_features(feat_dir, "train")
    assert x.shape == ref_x.shape and x.dtype == np.float32
    np.testing.assert_array_equal(y, ref_y)  # stored order of the long-tailed train split
    np.testing.assert_allclose(x, ref_x, rtol=1e-4, atol=1e-5)


def test_extract_streams_in_chunks_and_writes_info(run_dir, feat_dir):
    info = read_info(feat_dir)
    x, y = read_features(feat_dir, "train")
    tx, ty = read_features(feat_dir, "test")
    assert info["class_counts"] == np.bincount(y, minlength=10).tolist() == [120, 92, 71, 55, 43, 33, 25, 20, 15, 12]
    assert info["num_classes"] == 10 and info["feature_dim"] == x.shape[1]
    assert info["sizes"] == {"train": len(y), "test": len(ty)} and len(ty) == 500
    assert info["backbone"] == "resnet8" and Path(info["source_run"]) == run_dir.resolve()
    assert info["holdout"]["size"] == len(holdout_indices(y, 0.1, 0)[1])
    with h5py.File(feat_dir / "features_train.h5", "r") as f:
        assert f["features"].chunks[0] == 64 < len(y)  # appended 64 rows at a time
        assert f["features"].maxshape == (None, x.shape[1])
        assert len(f.attrs["model_sha256"]) == 64 and "eval view" in f.attrs["transform"]


def test_extract_missing_split_is_clear(run_dir, tmp_path):
    with pytest.raises(LongtailError, match="digits has no 'val' split"):
        extract_features(run_dir, tmp_path, splits=("val",), device="cpu")
    with pytest.raises(LongtailError, match="unknown split 'valid'"):
        extract_features(run_dir, tmp_path, splits=("valid",), device="cpu")
    with pytest.raises(LongtailError, match="has no config.yaml"):
        extract_features(tmp_path, tmp_path / "out", device="cpu")


def test_holdout_is_stratified_disjoint_and_seeded():
    counts = [50, 21, 10, 5, 2, 1]
    y = np.random.default_rng(1).permutation(np.repeat(np.arange(6), counts))
    tr, va = holdout_indices(y, 0.1, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))
    got = np.bincount(y[va], minlength=6).tolist()
    assert got == [5, 2, 1, 1, 1, 0]  # round(0.1 n), at least 1 for n >= 2, none for n == 1
    tr2, va2 = holdout_indices(y, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, holdout_indices(y, 0.1, seed=4)[1])
    with pytest.raises(LongtailError, match=r"fraction must be in \(0, 1\) \(got 1.5\)"):
        holdout_indices(y, 1.5)


def test_load_feature_splits_checks(tmp_path):
    write_features(tmp_path / "features_train.h5", np.zeros((4, 3)), [0, 1, 2, 1])
    write_features(tmp_path / "features_test.h5", np.zeros((2, 5)), [0, 1])
    write_features(tmp_path / "features_val.h5", np.zeros((2, 3)), [0, 7])
    write_features(tmp_path / "features_empty.h5", np.zeros((0, 3)), np.zeros(0))
    out = load_feature_splits(tmp_path, ["train"], num_classes=3)
    assert out["train"][0].shape == (4, 3)
    with pytest.raises(DataError, match="'train' has D=3 but 'test' has D=5"):
        load_feature_splits(tmp_path, ["train", "test"])
    with pytest.raises(DataError, match=r"split 'val' has label 7 outside \[0, 3\)"):
        load_feature_splits(tmp_path, ["train", "val"], num_classes=3)
    with pytest.raises(DataError, match="split 'empty' .* is empty"):
        load_feature_splits(tmp_path, ["empty"])
    with pytest.raises(DataError, match="run 'longtail extract RUN_DIR --out"):
        load_feature_splits(tmp_path / "nowhere", ["train"])
    with pytest.raises(DataError, match="features.json not found"):
        read_info(tmp_path)
