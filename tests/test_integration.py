"""Integration: the whole pipeline on real CIFAR-10-LT and TinyImageNet-LT, and CIFAR-100 in both official
formats on synthetic pixels (with the real labels). These tests need $LONGTAIL_TEST_DATA (see .ci/run)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import require
from datafiles import write_cifar100_python_real, write_cifar_binary
from longtail.cli import main
from longtail.data.splits import indices_sha256, stored_splits

pytestmark = pytest.mark.data


def run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# a small backbone keeps the full 10,000-image test evaluation at a few seconds on a 2-core CPU
SMALL = ["model.backbone=resnet8", "model.width=8"]
SMOKE = ["train.max_steps=3", "train.progress=false", "device=cpu", "eval.batch_size=1000", *SMALL]


def test_cifar10_lt_trains_on_real_data(test_data_root, tmp_path, capsys):
    require(test_data_root / "cifar-10-batches-bin" / "data_batch_1.bin")
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--config", "configs/cifar10_lt/ldam_drw.yaml", "--out", str(out),
                             f"data.root={test_data_root}", *SMOKE], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["train_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert s["data_verified"] is True and s["num_test"] == 10000 and s["steps"] == 3
    assert s["few"] is None and s["many"] is not None  # CIFAR-10-LT has no Few class
    assert "12406 train / 10000 test images" in stdout
    code, stdout, _ = run(["eval", str(out), f"data.root={test_data_root}"], capsys)
    assert code == 0 and "agrees with summary.json" in stdout


def test_cifar10_indices_match_stored_split(test_data_root, capsys, monkeypatch):
    require(test_data_root / "cifar-10-batches-bin" / "data_batch_1.bin")
    monkeypatch.setenv("LONGTAIL_DATA", str(test_data_root))  # the documented fallback for data.root
    for rho in (10, 100):
        code, stdout, err = run(["data", "indices", "cifar10", "--imbalance", str(rho)], capsys)
        assert code == 0, err
        idx = np.array([int(x) for x in stdout.split()])
        assert list(idx) == sorted(idx) and len(set(idx)) == len(idx)
        rec = stored_splits()["cifar10"][f"exp_r{rho}_s0"]
        assert len(idx) == rec.total and indices_sha256(idx) == rec.sha256


def test_unverified_data_is_recorded(test_data_root, tmp_path, capsys):
    require(test_data_root / "cifar-10-batches-bin" / "data_batch_1.bin")
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--config", "configs/cifar10_lt/ce.yaml", "--out", str(out),
                             f"data.root={test_data_root}", "data.verify=false", *SMOKE], capsys)
    assert code == 0, err
    assert "data.verify=false" in stdout + err
    assert json.loads((out / "summary.json").read_text())["data_verified"] is False


def test_tinyimagenet_lt_split_and_training(test_data_root, tmp_path, capsys):
    require(test_data_root / "tiny-imagenet-200" / "wnids.txt")
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--config", "configs/tinyimagenet_lt/la.yaml", "--out", str(out),
                             f"data.root={test_data_root}", "train.batch_size=32", *SMOKE], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert sum(s["train_counts"]) == 21549 and s["train_counts"][0] == 500 and s["train_counts"][-1] == 5
    assert s["shots"] == {"many": 70, "medium": 70, "few": 60} and s["num_test"] == 10000
    assert s["class_names"] == sorted(s["class_names"])
    # the split of a factor the partial copy cannot serve is refused with a clear message
    code, _, err = run(["train", "--config", "configs/tinyimagenet_lt/la.yaml", "--out", str(tmp_path / "r2"),
                        f"data.root={test_data_root}", "data.imbalance=2", *SMOKE], capsys)
    assert code == 2 and "missing" in err and not (tmp_path / "r2").exists()


@pytest.fixture(scope="module")
def cifar100_synthetic(test_data_root, tmp_path_factory):
    """CIFAR-100 in both official formats: real labels and pickle headers, synthetic pixels."""
    parts = test_data_root / "cifar100-parts"
    for f in ("train.header", "train.trailer", "test.header", "test.trailer", "meta", "train_fine_labels.u8"):
        require(parts / f)
    root = tmp_path_factory.mktemp("c100")
    fine = {s: np.fromfile(parts / f"{s}_fine_labels.u8", np.uint8).astype(np.int64) for s in ("train", "test")}
    coarse = {s: np.fromfile(parts / f"{s}_coarse_labels.u8", np.uint8).astype(np.int64) for s in ("train", "test")}
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (len(fine[s]), 32, 32, 3), dtype=np.uint8) for s in ("train", "test")}
    py = root / "py" / "cifar-100-python"
    for s in ("train", "test"):
        write_cifar100_python_real(py, s, (parts / f"{s}.header").read_bytes(), (parts / f"{s}.trailer").read_bytes(),
                                   x[s])
    (py / "meta").write_bytes((parts / "meta").read_bytes())
    write_cifar_binary(root / "bin", "cifar100", x["train"], fine["train"], x["test"], fine["test"],
                       coarse=(coarse["train"], coarse["test"]))
    return root


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar100_lt_trains_in_both_formats(cifar100_synthetic, tmp_path, capsys, fmt):
    root = cifar100_synthetic / ("py" if fmt == "python" else "bin")
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--config", "configs/cifar100_lt/cb.yaml", "--out", str(out),
                             f"data.root={root}", f"data.format={fmt}", "data.verify=false", *SMOKE], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert sum(s["train_counts"]) == 10847 and s["shots"] == {"many": 35, "medium": 35, "few": 30}
    if fmt == "python":  # the real meta file (the synthetic binary copy has placeholder names)
        assert s["class_names"][:2] == ["apple", "aquarium_fish"]
    # both formats select the same images: the stored split checksum was checked while loading
    assert json.loads((out / "summary.json").read_text())["data_verified"] is False


def test_missing_data_without_network(tmp_path, capsys, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = run(["train", "--config", "configs/cifar10_lt/ce.yaml", "--out", str(tmp_path / "r"),
                        f"data.root={empty}", *SMOKE], capsys)
    assert code == 2 and "cifar-10-python.tar.gz" in err and str(empty) in err and "LONGTAIL_DATA" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and list(empty.iterdir()) == []


@pytest.mark.parametrize("method", ["bcl", "bbl"])
def test_contrastive_methods_train_on_real_cifar10_lt(test_data_root, tmp_path, capsys, method):
    """A few real steps of the three-view recipes (AutoAugment + Cutout view, two SimCLR-style views)."""
    require(test_data_root / "cifar-10-batches-bin" / "data_batch_1.bin")
    out = tmp_path / "run"
    code, _, err = run(["train", "--config", f"configs/cifar10_lt/{method}.yaml", "--out", str(out),
                        f"data.root={test_data_root}", "train.batch_size=64", "train.max_steps=3", "train.progress=false",
                        "device=cpu", "eval.batch_size=1000", *SMALL], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == method and s["steps"] == 3 and s["augment"] == "autoaugment"
    assert sum(s["train_counts"]) == 12406
