"""Tiny-ImageNet-200 and its long-tailed split (docs/protocol.md §3).

Class ``i`` is the ``i``-th wnid in sorted order (the ImageFolder order). The full train list is
*generated* from the wnids, 500 files per class sorted by name, never taken from a directory listing: a
partial copy (such as one holding only the imbalance-10 subset) would otherwise give a different split.
The long-tailed subset is then the §2 recipe with n_max = 500, C = 200 and split seed 0 on the class-major
labels ``i // 500``. The official val set (10,000 images, 50 per class) is the test set.

Only the selected train images and the val images are decoded (RGB, 64x64, grayscale JPEGs converted).
Decoding about 30,000 small JPEGs takes several seconds, so the arrays are cached as ``.npy`` files in
``tiny-imagenet-200/.longtail_cache/``, keyed by a hash of the selected files (path, size and
modification time), and reused as long as the same files are selected and unchanged.

There are no official per-file checksums for Tiny-ImageNet; the published MD5 of the zip is checked on
download, and a local copy is checked for structure (200 wnids, every selected file present, every
image decodable at 64x64).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from longtail.data.base import ArraySplit
from longtail.data.download import download_url, safe_extract, verify_file
from longtail.data.splits import lt_counts, select_lt_indices
from longtail.fileio import atomic_write
from longtail.errors import DataError

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # the value torchvision-style loaders (e.g. avalanche) check
NUM_CLASSES = 200
PER_CLASS = 500
SIZE = 64
CACHE_DIR = ".longtail_cache"
CACHE_VERSION = "v1"  # bump when the decoding changes, so old caches are ignored


@dataclass
class TinyData:
    """The long-tailed train split and the full test (official val) split.

    Shape:
        train.images / test.images: uint8 [N, 64, 64, 3]; labels: int64 [N].
    """

    train: ArraySplit
    test: ArraySplit
    class_names: list[str]  # the 200 wnids, sorted
    train_indices: np.ndarray  # int64 indices into tinyimagenet_train_files(class_names), class-major
    words: dict[str, str] = field(default_factory=dict)  # wnid -> human-readable words
    folder: Optional[Path] = None


def tinyimagenet_train_files(wnids: Sequence[str]) -> list[str]:
    """The full train list, relative to ``tiny-imagenet-200/``, in ImageFolder order.

    For each wnid in sorted order: ``sorted(f"{wnid}_{k}.JPEG" for k in range(500))`` as
    ``train/{wnid}/images/{file}``. Note the lexicographic order: ``_0, _1, _10, _100, _101, ...``.
    """
    out = []
    for wnid in sorted(wnids):
        out += [f"train/{wnid}/images/{f}" for f in sorted(f"{wnid}_{k}.JPEG" for k in range(PER_CLASS))]
    return out


def tinyimagenet_lt_indices(
    imbalance: float, *, profile: str = "exp", step_fraction: float = 0.5, split_seed: int = 0
) -> np.ndarray:
    """Indices into the full train list kept by the long-tailed split (class-major, as §2).

    Equivalent to the data README's recipe: ``np.random.seed(0)``, then per class ``idx = np.arange(500);
    np.random.shuffle(idx)`` and keep ``idx[:n_i]`` (offset by ``500 * i``).
    """
    full_labels = np.arange(NUM_CLASSES * PER_CLASS, dtype=np.int64) // PER_CLASS  # class-major by construction
    counts = lt_counts(PER_CLASS, NUM_CLASSES, imbalance, profile, step_fraction)
    return select_lt_indices(full_labels, counts, split_seed)


def read_wnids(folder: Path) -> list[str]:
    """The sorted class ids from ``wnids.txt``; there must be exactly 200 distinct ones."""
    path = Path(folder) / "wnids.txt"
    if not path.is_file():
        raise DataError(f"{path} is missing; {folder} is not a complete Tiny-ImageNet-200 folder")
    wnids = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(wnids) != NUM_CLASSES or len(set(wnids)) != NUM_CLASSES:
        raise DataError(
            f"{path} has {len(wnids)} lines ({len(set(wnids))} distinct class ids), expected {NUM_CLASSES}. "
            "Some copies of Tiny-ImageNet ship a truncated wnids.txt; replace it with the official one."
        )
    return sorted(wnids)


def read_val_annotations(folder: Path, wnids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Val image paths (``val/images/<file>``) and labels from ``val/val_annotations.txt``, in file order."""
    path = Path(folder) / "val" / "val_annotations.txt"
    if not path.is_file():
        raise DataError(f"{path} is missing; the Tiny-ImageNet val set (our test set) cannot be labelled")
    index = {w: i for i, w in enumerate(sorted(wnids))}
    paths, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(
                f"{path}, line {n}: expected '<file>\\t<wnid>\\t<box>' with a wnid from wnids.txt, got {line!r}"
            )
        paths.append(f"val/images/{parts[0]}")
        labels.append(index[parts[1]])
    return paths, np.asarray(labels, dtype=np.int64)


def read_words(folder: Path, wnids: Sequence[str]) -> dict[str, str]:
    """wnid -> words for the given wnids from ``words.txt`` (empty if the file is absent)."""
    path = Path(folder) / "words.txt"
    if not path.is_file():
        return {}
    wanted = set(wnids)
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            out[wnid] = words.strip()
    return out


def locate_tinyimagenet(root: Path, *, download: bool = True, verify: bool = True) -> Path:
    """The ``tiny-imagenet-200`` folder: ``root`` itself, ``root/tiny-imagenet-200``, or extracted from the
    official zip (found in ``root`` or downloaded)."""
    root = Path(root).expanduser()
    if root.name == FOLDER or (root / "wnids.txt").is_file():
        if not root.is_dir():
            raise DataError(f"{root} does not exist or is not a folder")
        return root
    if (root / FOLDER).is_dir():
        return root / FOLDER
    archive = root / ARCHIVE
    if archive.is_file():
        if verify:
            verify_file(archive, "md5", ARCHIVE_MD5)
    elif download:
        download_url(URL, archive, "md5", ARCHIVE_MD5, searched=root, layout_hint=FOLDER)
    else:
        raise DataError(
            f"Tiny-ImageNet-200 was not found under {root}: expected the folder {root / FOLDER} (or {ARCHIVE}). "
            "Point data.root (or $LONGTAIL_DATA) at the folder that contains it, or set data.download=true."
        )
    safe_extract(archive, root)
    if not (root / FOLDER).is_dir():
        raise DataError(f"{archive} did not contain the folder {FOLDER}; it is not the official archive")
    return root / FOLDER


def _stat_files(folder: Path, paths: Sequence[str], what: str, hint: str) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every file; DataError listing the missing ones."""
    stats, missing = [], []
    base = str(folder)
    for p in paths:
        try:
            st = os.stat(os.path.join(base, p))
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            missing.append(p)
    if missing:
        first = ", ".join(missing[:5])
        raise DataError(
            f"{len(missing)} of {len(paths)} {what} are missing under {folder} (first: {first}). {hint}"
        )
    return stats


def _cache_key(paths: Sequence[str], stats: Sequence[tuple[int, int]]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p, (size, mtime) in zip(paths, stats):
        h.update(f"{p}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:20]


def _decode(folder: Path, paths: Sequence[str], desc: str) -> np.ndarray:
    out = np.empty((len(paths), SIZE, SIZE, 3), dtype=np.uint8)
    base = str(folder)  # os.path.join: pathlib's per-call parsing adds up over 30,000 files
    for i, p in enumerate(tqdm(paths, desc=desc, unit="img", disable=None, mininterval=2.0)):
        path = os.path.join(base, p)
        try:
            # formats=["JPEG"]: skips probing every other format plugin, about a third of the time per image
            with Image.open(path, formats=["JPEG"]) as im:
                if im.size != (SIZE, SIZE):
                    raise DataError(f"{path} is {im.size[0]}x{im.size[1]}, expected {SIZE}x{SIZE}")
                out[i] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # ~2% are grayscale
        except OSError as e:
            raise DataError(f"cannot decode {path} ({e}); replace it with the original file") from e
    return out


def _load_images(folder: Path, paths: Sequence[str], stats, kind: str, use_cache: bool) -> np.ndarray:
    """Decoded images, read from or written to the .npy cache."""
    cache = folder / CACHE_DIR / f"{kind}-{_cache_key(paths, stats)}.npy"
    if use_cache and cache.is_file():
        try:
            arr = np.load(cache, allow_pickle=False)
            if arr.dtype == np.uint8 and arr.shape == (len(paths), SIZE, SIZE, 3):
                return arr
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    arr = _decode(folder, paths, f"decoding Tiny-ImageNet {kind}")
    if use_cache:
        try:
            def save(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, arr)

            atomic_write(cache, save, durable=False)  # another process never reads half a cache
        except OSError:
            pass  # read-only copy: decode again next time
    return arr


def load_tinyimagenet(
    root: Path,
    imbalance: float,
    *,
    profile: str = "exp",
    step_fraction: float = 0.5,
    split_seed: int = 0,
    download: bool = True,
    verify: bool = True,
    cache: bool = True,
) -> TinyData:
    """Tiny-ImageNet-LT: the long-tailed train split and the official val set as the test set.

    Args:
        root: the data root holding ``tiny-imagenet-200/``, or that folder itself.
        imbalance: rho (1 gives the full balanced train set).
        profile, step_fraction, split_seed: as in :func:`longtail.data.splits.lt_counts` /
            :func:`~longtail.data.splits.select_lt_indices` (the protocol fixes split_seed = 0).
        download: download the official zip if no copy is found.
        verify: check the zip's MD5 before extracting a local or downloaded archive.
        cache: read/write the decoded arrays under ``tiny-imagenet-200/.longtail_cache/``.

    Raises:
        DataError: the folder is incomplete (missing files are counted and the first few named).
    """
    folder = locate_tinyimagenet(root, download=download, verify=verify)
    wnids = read_wnids(folder)
    files = tinyimagenet_train_files(wnids)
    indices = tinyimagenet_lt_indices(imbalance, profile=profile, step_fraction=step_fraction, split_seed=split_seed)
    train_paths = [files[i] for i in indices]
    test_paths, test_labels = read_val_annotations(folder, wnids)

    train_stats = _stat_files(
        folder, train_paths, f"train images selected at imbalance {imbalance:g}",
        "A partial copy only serves the imbalance factors whose subset it holds (the imbalance-10 subset "
        "also holds the factor-50 and factor-100 ones); use such a factor, or the full dataset.",
    )
    test_stats = _stat_files(folder, test_paths, "val images", "The val set must be complete; copy val/ again.")
    train_labels = indices // PER_CLASS
    train = ArraySplit(_load_images(folder, train_paths, train_stats, "train", cache), train_labels)
    test = ArraySplit(_load_images(folder, test_paths, test_stats, "val", cache), test_labels)
    return TinyData(train, test, wnids, indices, read_words(folder, wnids), folder)
