"""List files (`<relative_path> <label>`): parsing, errors with line numbers, prefixes, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longtail.data.base import FileSplit
from longtail.data.listfile import apply_path_prefix, check_disjoint, list_summary, read_list_file
from longtail.errors import DataError


def make_images(root: Path, paths: list[str]) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"jpg")


@pytest.fixture
def good(tmp_path):
    paths = ["train/a/1.jpg", "train/a/2.jpg", "train/b/1.jpg", "train/c/9.jpg"]
    make_images(tmp_path, paths)
    lst = tmp_path / "train.txt"
    lst.write_text("train/a/1.jpg 0\ntrain/a/2.jpg 0\ntrain/b/1.jpg 1\ntrain/c/9.jpg 2\n\n")  # blank trailing line
    return lst, tmp_path, paths


def test_good_list(good):
    lst, root, paths = good
    s = read_list_file(lst, root, num_classes=3)
    assert s.paths == paths and s.root == root
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0, 0, 1, 2]
    assert list_summary(s) == {"images": 4, "classes": 3, "min": 1, "max": 2}
    assert list_summary(s, num_classes=5) == {"images": 4, "classes": 5, "min": 0, "max": 2}


def test_windows_line_ends_bom_and_no_final_newline(tmp_path):
    make_images(tmp_path, ["x/a.jpg", "x/b.jpg"])
    lst = tmp_path / "l.txt"
    lst.write_bytes("\ufeffx/a.jpg 3\r\nx/b.jpg 1".encode("utf-8"))
    s = read_list_file(lst, tmp_path)
    assert s.paths == ["x/a.jpg", "x/b.jpg"] and s.labels.tolist() == [3, 1]


@pytest.mark.parametrize(
    "bad_line, why",
    [
        ("train/b/1.jpg", "expected 2 fields separated by one space, found 1"),
        ("train/b/1.jpg  1", "found 3"),  # two spaces
        ("train/b/1.jpg\t1", "found 1"),  # a tab is not the separator
        ("train/b/1.jpg 1 extra", "found 3"),
        ("train/b/1.jpg one", "label 'one' is not an integer"),
        ("train/b/1.jpg 1.0", "label '1.0' is not an integer"),
        ("train/b/1.jpg -1", "label -1 is negative"),
        ("train/b/1.jpg 3", r"label 3 is out of range for 3 classes \(0..2\)"),
        (" 1", "empty path"),
        ("/abs/b/1.jpg 1", "must be relative"),
        ("", "blank line"),  # only allowed at the end
        ("   ", "blank line"),
    ],
)
def test_bad_line_names_file_line_and_text(tmp_path, bad_line, why):
    make_images(tmp_path, ["train/a/1.jpg", "train/c/9.jpg"])
    lst = tmp_path / "list.txt"
    lst.write_text(f"train/a/1.jpg 0\n{bad_line}\ntrain/c/9.jpg 2\n")
    with pytest.raises(DataError, match=why) as ei:
        read_list_file(lst, tmp_path, num_classes=3)
    msg = str(ei.value)
    assert f"{lst}, line 2:" in msg and repr(bad_line) in msg


def test_label_range_unchecked_without_num_classes(tmp_path):
    make_images(tmp_path, ["a.jpg"])
    (tmp_path / "l.txt").write_text("a.jpg 999\n")
    assert read_list_file(tmp_path / "l.txt", tmp_path).labels.tolist() == [999]


def test_invalid_utf8(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"a.jpg 0\n\xff\xfe.jpg 1\n")
    with pytest.raises(DataError, match=r"l.txt, line 2: not valid UTF-8"):
        read_list_file(tmp_path / "l.txt", tmp_path, check_files=False)


def test_empty_and_missing_list(tmp_path):
    (tmp_path / "l.txt").write_text("\n\n")
    with pytest.raises(DataError, match="has no samples"):
        read_list_file(tmp_path / "l.txt", tmp_path)
    with pytest.raises(DataError, match="does not exist.*data.train_list"):
        read_list_file(tmp_path / "nope.txt", tmp_path)


def test_missing_images_counted_with_line_numbers(good):
    lst, root, paths = good
    (root / paths[1]).unlink()
    (root / paths[3]).unlink()
    with pytest.raises(DataError) as ei:
        read_list_file(lst, root)
    msg = str(ei.value)
    assert "2 of 4 images" in msg
    assert f"line 2: {root / paths[1]}" in msg and f"line 4: {root / paths[3]}" in msg
    assert "data.path_prefix" in msg
    assert len(read_list_file(lst, root, check_files=False)) == 4  # the check can be switched off


def test_missing_images_lists_only_first_few(tmp_path):
    (tmp_path / "l.txt").write_text("".join(f"d/{i}.jpg {i % 2}\n" for i in range(20)))
    with pytest.raises(DataError) as ei:
        read_list_file(tmp_path / "l.txt", tmp_path)
    msg = str(ei.value)
    assert "20 of 20 images" in msg and "line 5:" in msg and "line 6:" not in msg


def test_path_prefix_rule():
    assert apply_path_prefix("train/airfield/1.jpg", "data_256") == "data_256/airfield/1.jpg"
    got = apply_path_prefix("train/airfield/1.jpg", "places365_standard/train/")
    assert got == "places365_standard/train/airfield/1.jpg"
    assert apply_path_prefix("data_256/a/airfield/1.jpg", "") == "a/airfield/1.jpg"
    assert apply_path_prefix("train/airfield/1.jpg", None) == "train/airfield/1.jpg"
    assert apply_path_prefix("1.jpg", "data_256") == "1.jpg"


def test_path_prefix_applied_before_checking_files(tmp_path):
    make_images(tmp_path, ["places365_standard/train/airfield/1.jpg", "places365_standard/train/bar/2.jpg"])
    lst = tmp_path / "Places_LT_train.txt"
    lst.write_text("train/airfield/1.jpg 0\ntrain/bar/2.jpg 1\n")
    with pytest.raises(DataError, match="2 of 2 images"):
        read_list_file(lst, tmp_path)
    s = read_list_file(lst, tmp_path, path_prefix="places365_standard/train")
    assert s.paths == ["places365_standard/train/airfield/1.jpg", "places365_standard/train/bar/2.jpg"]


def test_check_disjoint(tmp_path):
    a = FileSplit(tmp_path, ["train/a/1.jpg", "train/b/2.jpg"], np.array([0, 1]))
    b = FileSplit(tmp_path, ["train/c/3.jpg"], np.array([2]))
    check_disjoint(a, b)  # no error
    c = FileSplit(tmp_path / "train", ["c/3.jpg", "./b/2.jpg"], np.array([2, 1]))  # same files, other root
    with pytest.raises(DataError) as ei:
        check_disjoint(a, c, names=("train", "val"))
    assert "share 1 image(s), e.g. train/b/2.jpg" in str(ei.value) and "train and val" in str(ei.value)


def test_list_summary_empty():
    s = FileSplit(Path("."), [], np.zeros(0, np.int64))
    assert list_summary(s) == {"images": 0, "classes": 0, "min": 0, "max": 0}


@pytest.mark.parametrize(
    "bad_path, prefix",
    [
        ("../../etc/passwd", None),  # leading ../
        ("../x.jpg", None),
        ("./../x.jpg", None),
        ("a/../../x.jpg", None),  # in the middle
        ("a/b/../../../x.jpg", None),
        ("train/../x.jpg", ""),  # inside as listed, but path_prefix "" drops "train/" and leaves "../x.jpg"
        ("train/x.jpg", "../elsewhere"),  # the prefix itself leaves the root
        ("a/..", None),  # the root itself is no image
        (".", None),
    ],
)
def test_path_leaving_the_root_is_refused_with_its_line(tmp_path, bad_path, prefix):
    root = tmp_path / "root"
    make_images(root, ["train/a/1.jpg", "x.jpg", "a/x.jpg", "data/a/1.jpg"])
    make_images(tmp_path, ["x.jpg", "elsewhere/x.jpg"])  # the files the bad paths point at do exist
    lst = root / "list.txt"
    text = f"x.jpg 0\n{bad_path} 1\n"  # a first path without "/" is not changed by a prefix
    lst.write_text(text)
    with pytest.raises(DataError) as ei:
        read_list_file(lst, root, path_prefix=prefix)
    msg = str(ei.value)
    assert f"{lst}, line 2: the path {bad_path!r}" in msg and "\n" not in msg
    assert "paths must be relative to the dataset root and stay inside it" in msg and str(root) in msg
    assert ("after data.path_prefix" in msg) == (apply_path_prefix(bad_path, prefix) != bad_path)
    assert ("names the dataset root itself" in msg) == (bad_path in ("a/..", "."))
    assert lst.read_text() == text and (tmp_path / "x.jpg").read_bytes() == b"jpg"  # nothing changed


def test_absolute_path_is_still_refused(tmp_path):
    make_images(tmp_path, ["a.jpg"])
    (tmp_path / "l.txt").write_text(f"a.jpg 0\n{tmp_path / 'a.jpg'} 0\n")
    with pytest.raises(DataError, match=r"line 2: the path is absolute; paths must be relative to the dataset root"):
        read_list_file(tmp_path / "l.txt", tmp_path)


def test_dotdot_that_stays_inside_is_accepted(tmp_path):
    make_images(tmp_path, ["a/1.jpg", "b/2.jpg", "3.jpg"])
    (tmp_path / "l.txt").write_text(f"a/../b/2.jpg 0\n./3.jpg 1\na/./../a/1.jpg 2\nz/../../{tmp_path.name}/3.jpg 0\n")
    with pytest.raises(DataError, match="line 4: the path .* leaves the dataset root"):  # out and back in: out
        read_list_file(tmp_path / "l.txt", tmp_path)
    (tmp_path / "l.txt").write_text("a/../b/2.jpg 0\n./3.jpg 1\na/./../a/1.jpg 2\n")
    s = read_list_file(tmp_path / "l.txt", tmp_path)
    assert s.paths == ["b/2.jpg", "3.jpg", "a/1.jpg"] and s.labels.tolist() == [0, 1, 2]  # stored normalised
    (tmp_path / "p.txt").write_text("x/2.jpg 0\n")
    s = read_list_file(tmp_path / "p.txt", tmp_path, path_prefix="a/../b")  # a prefix with .. inside the root
    assert s.paths == ["b/2.jpg"]


def test_symlinked_root_and_subfolders_keep_working(tmp_path):
    real = tmp_path / "disk"
    make_images(real, ["images/a/1.jpg"])
    make_images(tmp_path / "other_disk", ["b/2.jpg"])
    (tmp_path / "link_root").symlink_to(real)
    (real / "images" / "b").symlink_to(tmp_path / "other_disk" / "b")  # a subfolder that lives elsewhere
    (tmp_path / "l.txt").write_text("images/a/1.jpg 0\nimages/b/2.jpg 1\nimages/b/../a/1.jpg 0\n")
    s = read_list_file(tmp_path / "l.txt", tmp_path / "link_root")
    # b/.. is read lexically (images/a/1.jpg under the root), not as the folder above the link's target
    assert s.paths == ["images/a/1.jpg", "images/b/2.jpg", "images/a/1.jpg"]
