"""Tiny-ImageNet-200: the generated train list, the long-tailed split, decoding, caching, real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import require
from datafiles import class_color, make_archive, write_tiny_imagenet
from PIL import Image

from longtail.data import tinyimagenet as tiny
from longtail.data.splits import shot_summary
from longtail.data.tinyimagenet import (
    load_tinyimagenet,
    read_wnids,
    tinyimagenet_lt_indices,
    tinyimagenet_train_files,
)
from longtail.data.download import file_digest
from longtail.errors import ChecksumError, DataError


def readme_recipe(factor: float) -> list[int]:
    """The data README's recipe, verbatim in spirit: global seed, one shuffle of arange(500) per class."""
    np.random.seed(0)
    out = []
    for i in range(200):
        n = int(500 * (1 / factor) ** (i / 199))
        idx = np.arange(500)
        np.random.shuffle(idx)
        out += [500 * i + int(j) for j in idx[:n]]
    return out


@pytest.mark.parametrize("factor, total, groups", [
    (10, 39072, (139, 61, 0)), (50, 25082, (82, 82, 36)), (100, 21549, (70, 70, 60)), (200, 18836, (61, 60, 79)),
])
def test_split_matches_readme_recipe_and_protocol_totals(factor, total, groups):
    idx = tinyimagenet_lt_indices(factor)
    assert idx.tolist() == readme_recipe(factor)
    assert len(idx) == total
    counts = np.bincount(idx // 500, minlength=200)
    assert counts[0] == 500 and counts.argmax() == 0
    assert tuple(shot_summary(counts).values()) == groups


def test_splits_are_nested_and_balanced_is_everything():
    s100, s50, s10 = (set(tinyimagenet_lt_indices(f).tolist()) for f in (100, 50, 10))
    assert s100 <= s50 <= s10
    assert sorted(tinyimagenet_lt_indices(1).tolist()) == list(range(100000))


def test_train_files_order():
    files = tinyimagenet_train_files(["n02", "n01"])  # unsorted input: classes are sorted
    assert len(files) == 1000
    assert files[:5] == [f"train/n01/images/n01_{k}.JPEG" for k in ("0", "1", "10", "100", "101")]
    assert files[500] == "train/n02/images/n02_0.JPEG"
    assert files[499] == "train/n01/images/n01_99.JPEG"
    assert files[:500] == sorted(files[:500]) and len(set(files)) == 1000


def test_wnids_must_have_200_lines(tmp_path):
    (tmp_path / "wnids.txt").write_text("".join(f"n{i:08d}\n" for i in range(10)))
    with pytest.raises(DataError, match="has 10 lines .* expected 200"):
        read_wnids(tmp_path)
    (tmp_path / "wnids.txt").write_text("".join(f"n{i % 199:08d}\n" for i in range(200)))
    with pytest.raises(DataError, match="199 distinct"):
        read_wnids(tmp_path)
    with pytest.raises(DataError, match="wnids.txt is missing"):
        read_wnids(tmp_path / "nope")


# ------------------------------------------------------------------ loading (a 4-class, 10-per-class copy)

WNIDS = ["n04", "n01", "n03", "n02"]


@pytest.fixture
def small(monkeypatch):
    """Shrink the dataset constants so a synthetic copy has 4 classes of 10 images."""
    monkeypatch.setattr(tiny, "NUM_CLASSES", 4)
    monkeypatch.setattr(tiny, "PER_CLASS", 10)


def test_load_small_copy(tmp_path, small):
    gray = {"train/n01/images/n01_3.JPEG", "val/images/val_5.JPEG"}
    folder = write_tiny_imagenet(tmp_path, WNIDS, per_class=10, val_per_class=3, gray=gray)
    d = load_tinyimagenet(tmp_path, imbalance=5)
    counts = [int(10 * (1 / 5) ** (i / 3)) for i in range(4)]  # 10, 5, 3, 2
    assert d.class_names == sorted(WNIDS)
    assert np.bincount(d.train.labels).tolist() == counts
    assert d.train_indices.tolist() == tinyimagenet_lt_indices(5).tolist()
    np.testing.assert_array_equal(d.train.labels, d.train_indices // 10)
    assert d.train.images.shape == (sum(counts), 64, 64, 3) and d.train.images.dtype == np.uint8
    # pixels: equal to PIL's own RGB decoding, and each image carries its class colour
    files = tinyimagenet_train_files(WNIDS)
    for k, i in enumerate(d.train_indices):
        with Image.open(folder / files[i]) as im:
            np.testing.assert_array_equal(d.train.images[k], np.asarray(im.convert("RGB")))
        if files[i] not in gray:
            assert np.abs(d.train.images[k].astype(int) - class_color(int(d.train.labels[k]))).max() <= 3
    # grayscale files come out as RGB with equal channels
    g = [k for k, i in enumerate(d.train_indices) if files[i] in gray]
    for k in g:
        assert (d.train.images[k, ..., 0] == d.train.images[k, ..., 1]).all()
    # test = val, labels from the annotations, in file order (val_n belongs to WNIDS[n // 3])
    assert d.test.images.shape == (12, 64, 64, 3)
    assert d.test.labels.tolist() == [sorted(WNIDS).index(WNIDS[n // 3]) for n in range(12)]
    assert (d.test.images[5, ..., 0] == d.test.images[5, ..., 2]).all()
    assert d.words == {w: f"thing {w}" for w in WNIDS}
    assert d.folder == folder
    # the folder itself works as root too
    assert load_tinyimagenet(folder, imbalance=5).train_indices.tolist() == d.train_indices.tolist()


def test_decoded_arrays_are_cached(tmp_path, small, monkeypatch):
    folder = write_tiny_imagenet(tmp_path, WNIDS, per_class=10)
    first = load_tinyimagenet(tmp_path, imbalance=5)
    caches = sorted(p.name for p in (folder / ".longtail_cache").iterdir())
    assert len(caches) == 2 and caches[0].startswith("train-") and caches[1].startswith("val-")
    monkeypatch.setattr(tiny, "_decode", lambda *a: pytest.fail("should have used the cache"))
    again = load_tinyimagenet(tmp_path, imbalance=5)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.test.images, first.test.images)
    with pytest.raises(pytest.fail.Exception):  # another split is another key
        load_tinyimagenet(tmp_path, imbalance=2)
    with pytest.raises(pytest.fail.Exception):  # cache=False never reads the cache
        load_tinyimagenet(tmp_path, imbalance=5, cache=False)


def test_changed_file_invalidates_cache(tmp_path, small):
    folder = write_tiny_imagenet(tmp_path, WNIDS, per_class=10)
    load_tinyimagenet(tmp_path, imbalance=5)
    # repaint one selected image: its size/mtime change, so the key changes and it is decoded again
    i = int(tinyimagenet_lt_indices(5)[0])
    path = folder / tinyimagenet_train_files(WNIDS)[i]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path, "JPEG", quality=50)
    d = load_tinyimagenet(tmp_path, imbalance=5)
    assert d.train.images[0, ..., 0].mean() > 240


def test_partial_copy_serves_nested_factors_only(tmp_path, small):
    files = tinyimagenet_train_files(WNIDS)
    keep = {files[i] for i in tinyimagenet_lt_indices(5)}
    write_tiny_imagenet(tmp_path, WNIDS, per_class=10, keep=keep)
    expected = sum(int(10 * 0.1 ** (i / 3)) for i in range(4))
    assert len(load_tinyimagenet(tmp_path, imbalance=10, cache=False).train) == expected
    with pytest.raises(DataError) as ei:
        load_tinyimagenet(tmp_path, imbalance=2, cache=False)
    msg = str(ei.value)
    missing = [files[i] for i in tinyimagenet_lt_indices(2) if files[i] not in keep]
    assert f"{len(missing)} of {len(tinyimagenet_lt_indices(2))} train images" in msg
    assert missing[0] in msg and "partial copy only serves the imbalance factors" in msg


def test_bad_val_annotation_line(tmp_path, small):
    folder = write_tiny_imagenet(tmp_path, WNIDS, per_class=10)
    ann = folder / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[2] = "val_2.JPEG\tn99999999\t0\t0\t63\t63"
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"val_annotations.txt, line 3: .*n99999999"):
        load_tinyimagenet(tmp_path, imbalance=5)


def test_wrong_image_size(tmp_path, small):
    folder = write_tiny_imagenet(tmp_path, WNIDS, per_class=10)
    Image.new("RGB", (32, 32)).save(folder / "val" / "images" / "val_0.JPEG", "JPEG")
    with pytest.raises(DataError, match="val_0.JPEG is 32x32, expected 64x64"):
        load_tinyimagenet(tmp_path, imbalance=5)


def test_download_verifies_and_extracts(tmp_path, small, monkeypatch):
    src = write_tiny_imagenet(tmp_path / "src", WNIDS, per_class=10)
    server = tmp_path / "server"
    server.mkdir()
    archive = make_archive(server / "tiny-imagenet-200.zip", src)
    monkeypatch.setattr(tiny, "URL", archive.as_uri())
    monkeypatch.setattr(tiny, "ARCHIVE_MD5", file_digest(archive, "md5"))
    root = tmp_path / "data"
    d = load_tinyimagenet(root, imbalance=5)
    assert d.folder == root / "tiny-imagenet-200" and len(d.train) == 20
    assert (root / "tiny-imagenet-200.zip").is_file()
    monkeypatch.setattr(tiny, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(ChecksumError):
        load_tinyimagenet(tmp_path / "data2", imbalance=5)
    assert not (tmp_path / "data2" / "tiny-imagenet-200").exists()


def test_not_found_without_download(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200.*data.download=true"):
        load_tinyimagenet(tmp_path, imbalance=100, download=False)


# ----------------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_full_list_equals_shared_list(test_data_root):
    gz = require(test_data_root / "tiny-imagenet-200-train-files.txt.gz")
    wnids = read_wnids(test_data_root / "tiny-imagenet-200")
    assert wnids == sorted(wnids) and len(wnids) == 200
    with gzip.open(gz, "rt") as f:
        assert tinyimagenet_train_files(wnids) == f.read().split()


@pytest.mark.data
def test_real_tinyimagenet_lt(test_data_root, tmp_path):
    d = load_tinyimagenet(test_data_root, imbalance=100, cache=False)
    assert len(d.train) == 21549 and d.train.images.shape == (21549, 64, 64, 3)
    assert d.class_names == sorted(d.class_names) and len(d.class_names) == 200
    counts = np.bincount(d.train.labels, minlength=200)
    assert counts[0] == 500 and counts[199] == 5
    assert len(d.test) == 10000 and np.bincount(d.test.labels).tolist() == [50] * 200
    assert d.train.images.std() > 10  # real pictures, not blank
    for factor, total in ((50, 25082), (10, 39072)):
        idx = tinyimagenet_lt_indices(factor)
        assert len(idx) == total
        files = tinyimagenet_train_files(d.class_names)
        assert all((d.folder / files[i]).is_file() for i in idx)  # the restored copy serves factor 10
