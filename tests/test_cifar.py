"""CIFAR readers: both official formats, checksums, download, and the real restored data."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from datafiles import (
    CIFAR10_NAMES,
    make_archive,
    random_cifar,
    write_cifar100_python_real,
    write_cifar_binary,
    write_cifar_python,
)

from longtail.data import cifar, download
from longtail.data.cifar import LAYOUTS, labels_sha256, load_cifar
from longtail.data.download import CACHE_NAME, file_digest
from longtail.errors import ChecksumError, ConfigError, DataError


def synthetic(name: str, n_train: int = 50, n_test: int = 10):
    c = 10 if name == "cifar10" else 100
    xtr, ytr = random_cifar(n_train, c, seed=1)
    xte, yte = random_cifar(n_test, c, seed=2)
    return xtr, ytr, xte, yte


def trust_files(monkeypatch, folder: Path) -> None:
    """Make the files in ``folder`` the 'published' ones (their real digests), as a copied table."""
    table = {f.name: ("md5", file_digest(f, "md5")) for f in folder.iterdir() if f.is_file()}
    monkeypatch.setitem(cifar.KNOWN_CHECKSUMS, folder.name, table)


@pytest.fixture
def digest_calls(monkeypatch):
    calls = []
    real = download.file_digest
    monkeypatch.setattr(download, "file_digest", lambda p, a: calls.append(Path(p).name) or real(p, a))
    return calls


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# ------------------------------------------------------------------------------------ both formats


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_python_and_binary_give_identical_data(tmp_path, monkeypatch, name):
    xtr, ytr, xte, yte = synthetic(name)
    coarse = ((ytr + 7) % 20, (yte + 3) % 20)  # differs from the fine labels: the reader must take fine
    py = write_cifar_python(tmp_path / "py", name, xtr, ytr, xte, yte, coarse)
    bi = write_cifar_binary(tmp_path / "bin", name, xtr, ytr, xte, yte, coarse)
    trust_files(monkeypatch, py)
    trust_files(monkeypatch, bi)
    a = load_cifar(name, tmp_path / "py", download=False)
    b = load_cifar(name, tmp_path / "bin", download=False)
    assert (a.fmt, b.fmt) == ("python", "binary") and a.verified and b.verified
    for d in (a, b):
        assert d.train.images.dtype == np.uint8 and d.train.images.shape == (50, 32, 32, 3)
        assert d.train.labels.dtype == np.int64
        np.testing.assert_array_equal(d.train.images, xtr)  # release order, HWC
        np.testing.assert_array_equal(d.train.labels, ytr)
        np.testing.assert_array_equal(d.test.images, xte)
        np.testing.assert_array_equal(d.test.labels, yte)
    assert labels_sha256(a.train.labels) == labels_sha256(b.train.labels)
    assert labels_sha256(a.train.labels) != labels_sha256(a.train.labels[::-1])  # order-sensitive
    assert a.class_names == b.class_names and len(a.class_names) == (10 if name == "cifar10" else 100)


def test_pixel_layout_is_rgb_planes_row_major(tmp_path):
    # one hand-made binary record: pixel (row 1, col 2) is R=11, G=22, B=33; everything else 0
    rec = np.zeros(3073, np.uint8)
    rec[0] = 7
    for ch, v in enumerate((11, 22, 33)):
        rec[1 + ch * 1024 + 1 * 32 + 2] = v
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for f in LAYOUTS[("cifar10", "binary")].train + ("test_batch.bin",):
        (folder / f).write_bytes(rec.tobytes())
    d = load_cifar("cifar10", folder, download=False, verify=False)
    assert d.train.labels.tolist() == [7] * 5
    assert d.train.images[0, 1, 2].tolist() == [11, 22, 33]
    assert int(d.train.images.sum()) == 5 * (11 + 22 + 33)
    assert d.class_names == CIFAR10_NAMES  # no batches.meta.txt: the built-in names


def test_auto_prefers_python_and_root_may_be_the_folder(tmp_path):
    xtr, ytr, xte, yte = synthetic("cifar10")
    write_cifar_python(tmp_path, "cifar10", xtr, ytr, xte, yte)
    write_cifar_binary(tmp_path, "cifar10", xtr, ytr, xte, yte)
    assert load_cifar("cifar10", tmp_path, download=False, verify=False).fmt == "python"
    assert load_cifar("cifar10", tmp_path, fmt="binary", download=False, verify=False).fmt == "binary"
    d = load_cifar("cifar10", tmp_path / "cifar-10-batches-bin", download=False, verify=False)
    assert d.fmt == "binary" and d.folder == tmp_path / "cifar-10-batches-bin"
    with pytest.raises(ConfigError, match="data.format=python"):
        load_cifar("cifar10", tmp_path / "cifar-10-batches-bin", fmt="python", download=False, verify=False)
    with pytest.raises(ConfigError, match="cifar10 folder but the dataset asked for is cifar100"):
        load_cifar("cifar100", tmp_path / "cifar-10-batches-bin", download=False, verify=False)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown CIFAR dataset 'cifar1000'"):
        load_cifar("cifar1000", Path("."))
    with pytest.raises(ConfigError, match="data.format must be one of"):
        load_cifar("cifar10", Path("."), fmt="npz")


def test_not_found_without_download(tmp_path):
    with pytest.raises(DataError) as ei:
        load_cifar("cifar100", tmp_path, download=False)
    msg = str(ei.value)
    assert str(tmp_path) in msg and "cifar-100-python or cifar-100-binary" in msg and "data.download=true" in msg


def test_incomplete_folder_names_missing_file(tmp_path):
    xtr, ytr, xte, yte = synthetic("cifar10")
    folder = write_cifar_binary(tmp_path, "cifar10", xtr, ytr, xte, yte)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="missing data_batch_3.bin"):
        load_cifar("cifar10", tmp_path, download=False, verify=False)


def test_truncated_binary_file(tmp_path):
    xtr, ytr, xte, yte = synthetic("cifar100")
    folder = write_cifar_binary(tmp_path, "cifar100", xtr, ytr, xte, yte)
    (folder / "test.bin").write_bytes((folder / "test.bin").read_bytes()[:-1])
    with pytest.raises(DataError, match="test.bin: .* not a whole number of 3074-byte records"):
        load_cifar("cifar100", tmp_path, download=False, verify=False)


def test_label_out_of_range(tmp_path):
    xtr, ytr, xte, yte = synthetic("cifar10")
    yte[3] = 10
    write_cifar_binary(tmp_path, "cifar10", xtr, ytr, xte, yte)
    with pytest.raises(DataError, match="test labels outside 0..9"):
        load_cifar("cifar10", tmp_path, download=False, verify=False)


# ------------------------------------------------------------------------------------------ checksums


def test_checksum_mismatch_stops_before_unpickling(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = synthetic("cifar10")
    folder = write_cifar_python(tmp_path, "cifar10", xtr, ytr, xte, yte)
    trust_files(monkeypatch, folder)
    wrong = "f" * 32
    monkeypatch.setitem(cifar.KNOWN_CHECKSUMS[folder.name], "data_batch_2", ("md5", wrong))
    unpickled = []
    monkeypatch.setattr(cifar, "_load_pickle", lambda p: unpickled.append(p))
    before = (folder / "data_batch_2").read_bytes()
    with pytest.raises(ChecksumError) as ei:
        load_cifar("cifar10", tmp_path, download=False)
    msg = str(ei.value)
    assert str(folder / "data_batch_2") in msg and wrong in msg
    assert file_digest(folder / "data_batch_2", "md5") in msg and "data.verify=false" in msg
    assert unpickled == []
    assert (folder / "data_batch_2").read_bytes() == before  # still there, untouched


def test_verification_is_cached(tmp_path, monkeypatch, digest_calls):
    xtr, ytr, xte, yte = synthetic("cifar10")
    folder = write_cifar_binary(tmp_path, "cifar10", xtr, ytr, xte, yte)
    trust_files(monkeypatch, folder)
    load_cifar("cifar10", tmp_path, download=False)
    assert sorted(digest_calls) == sorted(LAYOUTS[("cifar10", "binary")].train + ("test_batch.bin", "batches.meta.txt"))
    assert (folder / CACHE_NAME).is_file()
    digest_calls.clear()
    load_cifar("cifar10", tmp_path, download=False)
    assert digest_calls == []
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes())  # touched: new mtime
    st = os.stat(folder / "test_batch.bin")
    os.utime(folder / "test_batch.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    load_cifar("cifar10", tmp_path, download=False)
    assert digest_calls == ["test_batch.bin"]


def test_verify_false_hashes_nothing(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = synthetic("cifar10")
    write_cifar_python(tmp_path, "cifar10", xtr, ytr, xte, yte)  # digests differ from the official ones

    def no_hashing(*a):
        raise AssertionError("verify=False must not hash")

    monkeypatch.setattr(download, "file_digest", no_hashing)
    d = load_cifar("cifar10", tmp_path, download=False, verify=False)
    assert d.verified is False
    np.testing.assert_array_equal(d.train.labels, ytr)
    with pytest.raises(AssertionError, match="must not hash"):
        load_cifar("cifar10", tmp_path, download=False, verify=True)


def test_unpickler_refuses_foreign_globals(tmp_path, capsys):
    xtr, ytr, xte, yte = synthetic("cifar10")
    folder = write_cifar_python(tmp_path, "cifar10", xtr, ytr, xte, yte)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_cifar("cifar10", tmp_path, download=False, verify=False)
    assert "pwned" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- download


@pytest.mark.parametrize("fmt, folder_name", [("auto", "cifar-100-python"), ("binary", "cifar-100-binary")])
def test_download_verifies_extracts_and_reads(tmp_path, monkeypatch, fmt, folder_name):
    xtr, ytr, xte, yte = synthetic("cifar100")
    server = tmp_path / "server"
    writer = write_cifar_python if fmt == "auto" else write_cifar_binary
    src = writer(tmp_path / "src", "cifar100", xtr, ytr, xte, yte)
    key = ("cifar100", "python" if fmt == "auto" else "binary")
    server.mkdir()
    archive = make_archive(server / LAYOUTS[key].archive, src)
    monkeypatch.setattr(cifar, "BASE_URL", server.as_uri() + "/")
    monkeypatch.setitem(LAYOUTS, key, dataclasses.replace(LAYOUTS[key], archive_md5=file_digest(archive, "md5")))
    trust_files(monkeypatch, src)
    root = tmp_path / "data"
    d = load_cifar("cifar100", root, fmt=fmt)
    assert d.folder == root / folder_name and d.verified
    np.testing.assert_array_equal(d.train.images, xtr)
    np.testing.assert_array_equal(d.test.labels, yte)
    assert sorted(p.name for p in root.iterdir()) == sorted([folder_name, LAYOUTS[key].archive])

    # a corrupt download is never extracted
    monkeypatch.setitem(LAYOUTS, key, dataclasses.replace(LAYOUTS[key], archive_md5="0" * 32))
    with pytest.raises(ChecksumError, match="is corrupt"):
        load_cifar("cifar100", tmp_path / "data2", fmt=fmt)
    assert not (tmp_path / "data2" / folder_name).exists()


def test_no_network_error_says_where_to_put_the_data(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as ei:
        load_cifar("cifar10", tmp_path)
    msg = str(ei.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and str(tmp_path) in msg
    assert "data.root=" in msg and "LONGTAIL_DATA" in msg
    assert "cifar-10-batches-py or cifar-10-batches-bin" in msg
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == []  # nothing half-written


def test_local_archive_is_used_before_downloading(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = synthetic("cifar10")
    src = write_cifar_binary(tmp_path / "src", "cifar10", xtr, ytr, xte, yte)
    root = tmp_path / "data"
    root.mkdir()
    archive = make_archive(root / "cifar-10-binary.tar.gz", src)
    key = ("cifar10", "binary")
    monkeypatch.setitem(LAYOUTS, key, dataclasses.replace(LAYOUTS[key], archive_md5=file_digest(archive, "md5")))
    monkeypatch.setattr(cifar, "download_url", lambda *a, **k: pytest.fail("must not download"))
    d = load_cifar("cifar10", root, verify=False)
    assert d.fmt == "binary"
    np.testing.assert_array_equal(d.train.images, xtr)


# ------------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_cifar10_binary(test_data_root, tmp_path):
    # a private copy, so the verification cache written next to the files starts empty
    folder = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(test_data_root / "cifar-10-batches-bin", folder)
    (folder / CACHE_NAME).unlink(missing_ok=True)
    d = load_cifar("cifar10", tmp_path, download=False, verify=True)
    assert d.fmt == "binary" and d.verified
    assert d.train.images.shape == (50000, 32, 32, 3) and d.test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(d.train.labels).tolist() == [5000] * 10
    assert np.bincount(d.test.labels).tolist() == [1000] * 10
    assert d.class_names == CIFAR10_NAMES
    assert (folder / CACHE_NAME).is_file()
    assert len(json.loads((folder / CACHE_NAME).read_text())) == 6


@pytest.mark.data
def test_real_cifar100_pickle_layout_matches_binary(test_data_root, tmp_path, monkeypatch):
    """The official python-version pickle (real header and trailer, synthetic pixels) reads like the binary."""
    parts = test_data_root / "cifar100-parts"  # the CIFAR-100 headers, trailers, labels and meta (.ci/run)
    for f in ("train.header", "train.trailer", "test.header", "test.trailer", "meta"):
        require(parts / f)
    fine = {s: np.fromfile(parts / f"{s}_fine_labels.u8", np.uint8).astype(np.int64) for s in ("train", "test")}
    coarse = {s: np.fromfile(parts / f"{s}_coarse_labels.u8", np.uint8).astype(np.int64) for s in ("train", "test")}
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (len(fine[s]), 32, 32, 3), dtype=np.uint8) for s in ("train", "test")}
    py = tmp_path / "py" / "cifar-100-python"
    for s in ("train", "test"):
        header, trailer = (parts / f"{s}.header").read_bytes(), (parts / f"{s}.trailer").read_bytes()
        write_cifar100_python_real(py, s, header, trailer, x[s])
    (py / "meta").write_bytes((parts / "meta").read_bytes())
    write_cifar_binary(tmp_path / "bin", "cifar100", x["train"], fine["train"], x["test"], fine["test"],
                       coarse=(coarse["train"], coarse["test"]))
    a = load_cifar("cifar100", tmp_path / "py", download=False, verify=False)
    b = load_cifar("cifar100", tmp_path / "bin", download=False, verify=False)
    assert len(a.train) == 50000 and len(a.test) == 10000
    # np.array_equal: assert_array_equal takes seconds on 150 MB
    assert np.array_equal(a.train.labels, fine["train"]) and np.array_equal(a.test.labels, fine["test"])
    assert np.array_equal(a.train.images, x["train"]) and np.array_equal(a.test.images, x["test"])
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.images, b.test.images)
    assert labels_sha256(a.train.labels) == labels_sha256(b.train.labels)
    assert np.bincount(a.train.labels).tolist() == [500] * 100
    assert a.class_names[:3] == ["apple", "aquarium_fish", "baby"] and a.class_names == list(cifar.CIFAR100_CLASSES)
    # the real meta file passes its published checksum
    assert file_digest(py / "meta", "md5") == cifar.KNOWN_CHECKSUMS["cifar-100-python"]["meta"][1]
