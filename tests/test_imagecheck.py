"""Images are checked to decode before training (data.check_images): failures, the cache, threads, wiring."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail import config as C
from longtail.cli import main
from longtail.data import imagecheck
from longtail.data.base import FileSplit
from longtail.data.build import build_dataset
from longtail.data.imagecheck import cache_path, check_images, find_undecodable, image_check_dir
from longtail.errors import DataError


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """Every cache of these tests goes to a fresh folder, never to the user's ~/.cache."""
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache_home"))
    return tmp_path / "cache_home" / "image_checks"


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The file names decoded, in any order (a spy around the real decoder)."""
    seen: list[str] = []
    real = imagecheck._decode

    def spy(path: str):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(imagecheck, "_decode", spy)
    return seen


def save(path: Path, fmt: str = "JPEG", size=(40, 32), mode: str = "RGB", seed: int = 0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, fmt, **kw)
    return path


def cut(path: Path, keep: float | int) -> Path:
    """Keep the first ``keep`` share of the file (a float) or drop its last ``-keep`` bytes (a negative int)."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return path


def write_list(path: Path, rels: list[str]) -> Path:
    path.write_text("".join(f"{r} {i % 3}\n" for i, r in enumerate(rels)))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def split_of(root: Path, rels: list[str]) -> FileSplit:
    return FileSplit(root, list(rels), np.arange(len(rels)) % 3)


def bad_set(root: Path) -> list[str]:
    """Eight files, five of them broken, the broken ones on lines 2, 4, 5, 6 and 8."""
    save(root / "a/good.jpg")
    cut(save(root / "a/trunc.jpg", size=(64, 48)), 0.5)
    save(root / "a/good.png", "PNG")
    cut(save(root / "a/trunc.png", "PNG", size=(64, 48)), 0.6)
    (root / "a/empty.jpg").write_bytes(b"")
    (root / "a/text.jpg").write_text("this is not an image\n")
    save(root / "a/gray.jpg", mode="L")
    cut(save(root / "a/prog.jpg", size=(64, 48), progressive=True), 0.8)
    return ["a/good.jpg", "a/trunc.jpg", "a/good.png", "a/trunc.png", "a/empty.jpg", "a/text.jpg", "a/gray.jpg",
            "a/prog.jpg"]


def test_good_images_of_many_kinds_pass(tmp_path, decodes):
    root = tmp_path / "root"
    rels = []
    for i, (fmt, mode, kw) in enumerate([("JPEG", "RGB", {}), ("JPEG", "L", {}), ("JPEG", "CMYK", {}),
                                         ("JPEG", "RGB", {"progressive": True}), ("PNG", "RGB", {}),
                                         ("PNG", "RGBA", {}), ("PNG", "P", {}), ("BMP", "RGB", {}),
                                         ("GIF", "P", {})]):
        rels.append(f"img/{i}.{fmt.lower()}")
        save(root / rels[-1], fmt, mode=mode, seed=i, **kw)
    check_images(split_of(root, rels), workers=2)
    assert sorted(decodes) == sorted(os.path.basename(r) for r in rels)


def test_jpeg_decoded_at_reduced_scale_png_in_full(tmp_path):
    jpg = save(tmp_path / "big.jpg", size=(400, 300))
    png = save(tmp_path / "big.png", "PNG", size=(400, 300))
    assert imagecheck._decode(str(jpg)) == (50, 38)  # 1/8 scale: the fast path is taken
    assert imagecheck._decode(str(png)) == (400, 300)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.7, 0.97, -2, -1])
def test_jpeg_cut_anywhere_is_caught_at_reduced_scale(tmp_path, progressive, keep):
    root = tmp_path / "root"
    cut(save(root / "x.jpg", size=(400, 300), progressive=progressive), keep)
    with pytest.raises(DataError, match=r"1 of 1 images .* \(image file is truncated"):
        check_images(split_of(root, ["x.jpg"]), workers=1)


def test_bad_images_are_all_reported_with_their_lines(tmp_path, decodes, cache_home):
    root = tmp_path / "root"
    rels = bad_set(root)
    lst = write_list(tmp_path / "train.txt", rels)
    before = snapshot(root), lst.read_bytes()
    with pytest.raises(DataError) as ei:
        check_images(split_of(root, rels), list_path=lst, workers=3)
    msg = str(ei.value)
    assert msg.startswith(f"5 of 8 images listed in {lst} cannot be decoded: ") and "\n" not in msg
    for n, why in [(2, "image file is truncated"), (4, "image file is truncated"), (5, "empty file (0 bytes)"),
                   (6, "not an image Pillow can read"), (8, "image file is truncated")]:
        assert f"line {n}: {root / rels[n - 1]} ({why}" in msg
    for n in (1, 3, 7):
        assert f"line {n}:" not in msg
    assert msg.index("line 2:") < msg.index("line 4:") < msg.index("line 8:")  # in list order
    assert "remove their lines from the list" in msg and "data.check_images=false" in msg
    assert (snapshot(root), lst.read_bytes()) == before  # nothing changed or removed; the cache lives elsewhere
    assert [p.parent for p in cache_home.iterdir()] == [cache_home]
    assert len(decodes) == 8
    # the good images were remembered: checking again decodes only the broken ones
    decodes.clear()
    with pytest.raises(DataError, match="5 of 8"):
        check_images(split_of(root, rels), list_path=lst, workers=1)
    assert sorted(decodes) == sorted(os.path.basename(rels[n - 1]) for n in (2, 4, 5, 6, 8))


def test_missing_file_and_folder_are_failures(tmp_path):
    root = tmp_path / "root"
    save(root / "ok.jpg")
    (root / "dir.jpg").mkdir()
    with pytest.raises(DataError) as ei:
        check_images(split_of(root, ["ok.jpg", "gone.jpg", "dir.jpg"]), list_path=tmp_path / "l.txt", workers=1)
    msg = str(ei.value)
    assert "2 of 3 images" in msg and f"line 2: {root / 'gone.jpg'} (No such file or directory)" in msg
    assert f"line 3: {root / 'dir.jpg'} (" in msg


def test_without_a_list_file_the_paths_are_named(tmp_path):
    root = tmp_path / "folder"
    save(root / "cat/1.jpg")
    cut(save(root / "dog/2.jpg"), 0.4)
    with pytest.raises(DataError) as ei:
        check_images(split_of(root, ["cat/1.jpg", "dog/2.jpg"]), workers=2)
    msg = str(ei.value)
    assert msg.startswith(f"1 of 2 images under {root} cannot be decoded: {root / 'dog/2.jpg'} (")
    assert "truncated" in msg.lower()
    assert "line" not in msg and "replace or remove them" in msg and "data.check_images=false" in msg


def test_only_the_first_few_are_named(tmp_path):
    root = tmp_path / "root"
    rels = [f"{i}.jpg" for i in range(9)]
    for r in rels:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        (root / r).write_bytes(b"nope")
    with pytest.raises(DataError) as ei:
        check_images(split_of(root, rels), list_path=tmp_path / "l.txt", workers=2)
    msg = str(ei.value)
    assert "9 of 9 images" in msg and "line 5:" in msg and "line 6:" not in msg and "and 4 more" in msg


def test_second_check_only_stats_the_files(tmp_path, decodes, cache_home):
    root = tmp_path / "root"
    rels = [f"c{i % 3}/{i}.jpg" for i in range(12)]
    for i, r in enumerate(rels):
        save(root / r, seed=i)
    lst = write_list(tmp_path / "train.txt", rels)
    before = snapshot(root)
    check_images(split_of(root, rels), list_path=lst, workers=2)
    assert len(decodes) == 12
    decodes.clear()
    check_images(split_of(root, rels), list_path=lst, workers=2)  # e.g. eval rebuilding the dataset
    assert decodes == []
    assert snapshot(root) == before  # nothing written into the dataset root
    files = list(cache_home.iterdir())
    assert files == [cache_path(root, lst)] and files[0].name.startswith("train-")
    cached = json.loads(files[0].read_text())["files"]
    assert set(cached) == set(rels) and cached[rels[0]] == [os.stat(root / rels[0]).st_size,
                                                            os.stat(root / rels[0]).st_mtime_ns]
    # another list over the same root has its own cache
    other = write_list(tmp_path / "val.txt", rels[:3])
    check_images(split_of(root, rels[:3]), list_path=other, workers=1)
    assert len(decodes) == 3 and len(list(cache_home.iterdir())) == 2


def test_changed_files_are_checked_again(tmp_path, decodes):
    root = tmp_path / "root"
    rels = [f"{i}.jpg" for i in range(5)]
    for i, r in enumerate(rels):
        save(root / r, seed=i)
    lst = write_list(tmp_path / "l.txt", rels)
    check_images(split_of(root, rels), list_path=lst, workers=1)
    decodes.clear()
    save(root / "1.jpg", size=(50, 50), seed=9)  # replaced: another size
    st = os.stat(root / "2.jpg")
    os.utime(root / "2.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: same size
    st = os.stat(root / "3.jpg")  # broken after it passed, its size kept, its mtime only 1 ns later
    (root / "3.jpg").write_bytes(b"x" * st.st_size)
    os.utime(root / "3.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    with pytest.raises(DataError, match=r"1 of 5 images .*line 4: .*3\.jpg"):
        check_images(split_of(root, rels), list_path=lst, workers=1)
    assert sorted(decodes) == ["1.jpg", "2.jpg", "3.jpg"]
    decodes.clear()
    save(root / "3.jpg", seed=3)  # fixed: only the fixed file is decoded
    check_images(split_of(root, rels), list_path=lst, workers=1)
    assert decodes == ["3.jpg"]


@pytest.mark.parametrize("damage", [
    b"", b"{not json", b"\xff\xfe\x00", b"[1, 2, 3]", b'{"version": 99, "files": {}}', b"[" * 100_000,
    "wrong_types", "other_root", "folder",
])
def test_damaged_cache_is_ignored_and_rebuilt(tmp_path, decodes, damage):
    root = tmp_path / "root"
    rels = ["a.jpg", "b.jpg", "c.jpg"]
    for i, r in enumerate(rels):
        save(root / r, seed=i)
    lst = write_list(tmp_path / "l.txt", rels)
    path = cache_path(root, lst)
    path.parent.mkdir(parents=True)
    if damage == "folder":
        path.mkdir()
    elif damage == "wrong_types":
        st = os.stat(root / "a.jpg")
        entries = {"a.jpg": [str(st.st_size), st.st_mtime_ns], "b.jpg": None, "c.jpg": [1.5, 2]}
        ident = {"version": imagecheck.CACHE_VERSION, "root": str(root), "list": str(lst)}
        path.write_text(json.dumps({**ident, "files": entries}))
    elif damage == "other_root":  # a valid cache of another copy, whose stamps happen to match
        copy = {"version": imagecheck.CACHE_VERSION, "root": "/elsewhere", "list": str(lst),
                "files": {r: [os.stat(root / r).st_size, os.stat(root / r).st_mtime_ns] for r in rels}}
        path.write_text(json.dumps(copy))
    else:
        path.write_bytes(damage)
    check_images(split_of(root, rels), list_path=lst, workers=2)  # no error
    assert sorted(decodes) == rels  # nothing was trusted
    decodes.clear()
    check_images(split_of(root, rels), list_path=lst, workers=2)
    assert sorted(decodes) == ([] if damage != "folder" else rels)  # rebuilt (a folder in its way: just not cached)


def test_damaged_cache_never_hides_a_bad_image(tmp_path):
    root = tmp_path / "root"
    cut(save(root / "x.jpg"), 0.5)
    lst = write_list(tmp_path / "l.txt", ["x.jpg"])
    cache_path(root, lst).parent.mkdir(parents=True)
    cache_path(root, lst).write_text('{"version": 1, "files": {"x.jpg": [1, 2]')  # cut short
    with pytest.raises(DataError, match="1 of 1 images"):
        check_images(split_of(root, ["x.jpg"]), list_path=lst, workers=1)


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_unwritable_cache_folder_still_checks_without_warnings(tmp_path, decodes, monkeypatch, recwarn, where):
    root = tmp_path / "root"
    save(root / "a.jpg")
    cut(save(root / "b.jpg"), 0.5)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # no folder can be made under it (works as root too)
    kw = {"cache_dir": blocker / "image_checks"} if where == "argument" else {}
    if where == "environment":
        monkeypatch.setenv("LONGTAIL_CACHE", str(blocker))
    for _ in range(2):
        with pytest.raises(DataError, match=r"1 of 2 images .*b\.jpg"):
            check_images(split_of(root, ["a.jpg", "b.jpg"]), workers=2, **kw)
    check_images(split_of(root, ["a.jpg"]), workers=2, **kw)
    assert sorted(decodes) == ["a.jpg", "a.jpg", "a.jpg", "b.jpg", "b.jpg"]  # no cache: decoded every time
    assert len(recwarn) == 0 and blocker.read_text() == "not a folder"


def test_cache_location(tmp_path, monkeypatch):
    assert image_check_dir() == tmp_path / "cache_home" / "image_checks"
    monkeypatch.delenv("LONGTAIL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert image_check_dir() == tmp_path / "home" / ".cache" / "longtail" / "image_checks"
    a = cache_path("/data/imagenet", "/data/imagenet/ImageNet_LT_train.txt", cache_dir=tmp_path)
    assert a.parent == tmp_path and a.name.startswith("ImageNet_LT_train-") and a.suffix == ".json"
    assert a == cache_path("/data/./imagenet/", "/data/imagenet/ImageNet_LT_train.txt", cache_dir=tmp_path)
    assert a != cache_path("/data/imagenet", "/data/imagenet/ImageNet_LT_test.txt", cache_dir=tmp_path)
    assert a != cache_path("/copy/imagenet", "/data/imagenet/ImageNet_LT_train.txt", cache_dir=tmp_path)
    assert cache_path("/data/flowers", None, cache_dir=tmp_path).name.startswith("flowers-")


def test_decoding_runs_on_several_threads(tmp_path, monkeypatch):
    root = tmp_path / "root"
    rels = [f"{i}.jpg" for i in range(24)]
    for i, r in enumerate(rels):
        save(root / r, seed=i)
    for i in (3, 17, 20):
        cut(root / rels[i], 0.5)
    expected, _ = find_undecodable(split_of(root, rels), workers=1, cache_dir=tmp_path / "c1")
    assert [i for i, _ in expected] == [3, 17, 20]
    threads: set[str] = set()
    real = imagecheck._decode

    def slow(path: str):
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # long enough that every thread of the pool gets work
        return real(path)

    monkeypatch.setattr(imagecheck, "_decode", slow)
    got, decoded = find_undecodable(split_of(root, rels), workers=3, cache_dir=tmp_path / "c2")
    assert got == expected and decoded == 24  # the same failures, in split order
    assert len(threads) == 3 and all(t.startswith("longtail-imagecheck") for t in threads)
    assert find_undecodable(split_of(root, rels), workers=0, cache_dir=tmp_path / "c2") == (expected, 3)
    assert find_undecodable(split_of(root, []), workers=4, cache_dir=tmp_path / "c3") == ([], 0)


# -- wiring: list-file datasets check every split before training ---------------------------------------------


def list_dataset(tmp_path: Path, val: bool = True) -> tuple[Path, dict[str, Path]]:
    """A three-class list-file dataset: train 6 images, val 3, test 3, small JPEGs."""
    root = tmp_path / "data"
    lists = {}
    for split, n in (("train", 6), ("val", 3), ("test", 3)) if val else (("train", 6), ("test", 3)):
        rels = [f"{split}/c{i % 3}/{i}.jpg" for i in range(n)]
        for i, r in enumerate(rels):
            save(root / r, size=(48, 40), seed=hash((split, i)) % 1000)
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("".join(f"{r} {i % 3}\n" for i, r in enumerate(rels)))
    return root, lists


def data_cfg(root: Path, lists: dict[str, Path], *extra: str):
    ov = ["data.name=imagenet_lt", f"data.root={root}", f"data.train_list={lists['train']}",
          f"data.test_list={lists['test']}", "data.num_classes=3", *extra]
    if "val" in lists:
        ov.append(f"data.val_list={lists['val']}")
    return C.validate(C.apply_overrides(C.Config(), ov)).data


def test_every_split_is_checked_with_the_loader_workers(tmp_path, monkeypatch):
    root, lists = list_dataset(tmp_path)
    calls = []
    monkeypatch.setattr(imagecheck, "check_images",
                        lambda split, *, list_path, workers: calls.append((len(split), list_path, workers)))
    build_dataset(data_cfg(root, lists, "data.num_workers=3"))
    assert calls == [(6, lists["train"], 3), (3, lists["val"], 3), (3, lists["test"], 3)]


def test_bad_val_image_stops_the_build_and_check_images_false_skips(tmp_path, decodes):
    root, lists = list_dataset(tmp_path)
    cut(root / "val/c2/2.jpg", 0.5)
    with pytest.raises(DataError, match=rf"1 of 3 images listed in {lists['val']} cannot be decoded: line 3: "):
        build_dataset(data_cfg(root, lists))
    decodes.clear()
    ds = build_dataset(data_cfg(root, lists, "data.check_images=false"))
    assert decodes == [] and len(ds.val) == 3  # skipped: the broken file is the loader's problem then


def test_train_fails_before_any_run_directory_on_a_bad_test_image(tmp_path, capsys):
    root, lists = list_dataset(tmp_path, val=False)
    (root / "test/c2/2.jpg").write_text("<html>404 not found</html>")  # a download gone wrong
    out = tmp_path / "run"
    args = ["train", "--config", "configs/quickstart.yaml", "--out", str(out), "data.name=imagenet_lt",
            f"data.root={root}", f"data.train_list={lists['train']}", f"data.test_list={lists['test']}",
            "data.num_classes=3", "data.num_workers=0", "device=cpu", "train.max_steps=1", "train.batch_size=4",
            "train.progress=false", "model.width=4", "eval.batch_size=8"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"1 of 3 images listed in {lists['test']} cannot be decoded: line 3: {root / 'test/c2/2.jpg'}" in err
    assert "data.check_images=false" in err and not out.exists()
    save(root / "test/c2/2.jpg")  # fixed: the run goes through, the good images only stat'ed
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()
