"""Your own images as a dataset: ``data.name=folder`` reads an image folder laid out by class.

::

    data.root/
      train/<class name>/<images>     required: one folder per class (nested folders are searched)
      test/<class name>/<images>      required: the evaluation split
      val/<class name>/<images>       optional: a validation split (stage 2 selects on it)

Classes are the ``train/`` folder names in sorted order (class 0 is the first name); the class names
appear in the summary, the report and ``longtail predict``. ``test/`` and ``val/`` may lack a class (its
accuracy is then absent) but may not hold a class that ``train/`` lacks. Files are read in sorted path
order; hidden files and files without an image extension are skipped.

The training split is used as it is, and the summary records its measured imbalance factor (largest
class count / smallest). With ``data.long_tailed=true`` a balanced ``train/`` folder is made long-tailed
by the toolbox's pinned recipe (docs/protocol.md): the exponential (or step) profile with
``data.imbalance`` and ``n_max`` = the smallest class's count, images chosen with ``data.split_seed``.

Two sources:

* ``memory`` (``data.source=auto`` picks it when the sampled training images are at most 64 pixels on
  each side): every image is decoded once to RGB at ``data.image_size`` (default: the images' own size,
  which must then be the same for all) and held as one uint8 array, augmented on the device like
  CIFAR. Normalisation uses the training images' own per-channel mean and std. The decoded arrays are
  cached outside the image folder (``$LONGTAIL_CACHE``, else ``~/.cache/longtail``), keyed by the files'
  paths, sizes and modification times.
* ``loader`` (larger images): files are decoded per batch by DataLoader workers, with ImageNet-style
  transforms at ``data.image_size`` (default 224) and ImageNet statistics; with ``data.check_images``
  every image is checked to decode before training.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from longtail.config import DataConfig
from longtail.data.base import ArraySplit, Dataset, FileSplit
from longtail.data.build import IMAGENET_MEAN, IMAGENET_STD, cache_root
from longtail.data.splits import lt_counts, select_lt_indices
from longtail.errors import ConfigError, DataError
from longtail.fileio import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "scan_folder", "build_folder", "load_image", "SMALL_IMAGE"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SMALL_IMAGE = 64  # data.source=auto holds images up to this size (each side) in memory
LOADER_SIZE = 224  # the loader source's default input size
SAMPLED = 64  # training images whose headers decide data.source=auto
CACHE_VERSION = "v1"
MAX_SHOWN = 5


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted paths relative to its parent's parent."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
    return sorted(out)


def scan_folder(root: Path) -> tuple[list[str], dict[str, FileSplit]]:
    """Class names and a FileSplit per split (``train``, ``test``, ``val`` when present) of an image folder.

    Raises:
        DataError: a missing ``train/`` or ``test/`` folder, no class, a training class without images, or
            an evaluation class that ``train/`` lacks.
    """
    root = Path(root)
    layout = "expected DIR/train/<class>/<image> and DIR/test/<class>/<image> (val/ optional)"
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a folder; {layout}")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder; {layout}")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders; {layout}")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, FileSplit] = {}
    for split in ("train", "test", "val"):
        base = root / split
        if not base.is_dir():
            continue
        names = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{base} has class folders that {root / 'train'} lacks: {', '.join(unknown[:MAX_SHOWN])}; "
                            f"every evaluation class needs training images")
        paths, labels = [], []
        for n in names:
            files = _class_files(base / n)
            paths += [os.path.relpath(f, root) for f in files]
            labels += [index[n]] * len(files)
        if split == "train":
            empty = [c for c in classes if index[c] not in set(labels)]
            if empty:
                raise DataError(f"training class folders without images: {', '.join(empty[:MAX_SHOWN])} "
                                f"(image extensions: {' '.join(IMAGE_EXTENSIONS)})")
        if not paths:
            raise DataError(f"{base} holds no images (image extensions: {' '.join(IMAGE_EXTENSIONS)})")
        splits[split] = FileSplit(root=root, paths=paths, labels=np.asarray(labels, dtype=np.int64))
    return classes, splits


def load_image(path: Path, size: Optional[int] = None) -> np.ndarray:
    """One image as uint8 RGB [H, W, 3], resized to ``size`` x ``size`` (bilinear, antialiased) when given.

    Raises:
        DataError: the file cannot be read or decoded.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} cannot be decoded as an image ({e})") from None


def _header_size(path: Path) -> Optional[tuple[int, int]]:
    """The image's size from its header, or None when unreadable (the decoding names every such file)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _choose_source(dcfg: DataConfig, train: FileSplit) -> str:
    if dcfg.source != "auto":
        return dcfg.source
    if dcfg.image_size is not None:
        return "memory" if dcfg.image_size <= SMALL_IMAGE else "loader"
    picks = np.linspace(0, len(train) - 1, num=min(SAMPLED, len(train))).astype(int)
    sizes = [s for i in sorted(set(picks.tolist())) if (s := _header_size(train.root / train.paths[i]))]
    return "memory" if sizes and max(max(s) for s in sizes) <= SMALL_IMAGE else "loader"


def _cache_key(split: FileSplit, size: Optional[int]) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}|{Path(split.root).resolve()}|{size}".encode())
    for p in split.paths:
        st = os.stat(split.root / p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _decode_all(split: FileSplit, size: Optional[int], workers: int) -> np.ndarray:
    """All images of ``split`` as one uint8 [N, H, W, 3] array; every undecodable file is named."""
    paths = [split.root / p for p in split.paths]
    failures: list[str] = []

    def one(path: Path) -> Optional[np.ndarray]:
        try:
            return load_image(path, size)
        except DataError as e:
            failures.append(str(e))
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL while decoding
        images = list(pool.map(one, paths))
    if failures:
        raise DataError(f"{len(failures)} of {len(paths)} images cannot be decoded: {'; '.join(sorted(failures)[:MAX_SHOWN])}. "
                        f"Fix or remove them")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w, _ in sorted(shapes)[:MAX_SHOWN])
        raise DataError(f"the images of {split.root} have different sizes ({shown}); set data.image_size=N to "
                        f"resize them all to N x N")
    return np.stack(images) if images else np.zeros((0, size or 1, size or 1, 3), np.uint8)


def _in_memory(split: FileSplit, size: Optional[int], workers: int) -> ArraySplit:
    """The decoded split, from the cache when its files are unchanged."""
    folder = cache_root() / "folders"
    path = folder / f"{_cache_key(split, size)}.npy"
    if path.is_file():
        try:
            images = np.load(path, allow_pickle=False)
            if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(split):
                return ArraySplit(images, split.labels.copy())
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt
    images = _decode_all(split, size, workers)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, images)

    try:
        atomic_write(path, save, durable=False)
    except OSError:
        pass  # an unwritable cache only costs the decoding next time
    return ArraySplit(images, split.labels.copy())


def _mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] (float64 sums over chunks)."""
    n, total, sq = 0, np.zeros(3), np.zeros(3)
    for i in range(0, len(images), 4096):
        x = images[i:i + 4096].reshape(-1, 3).astype(np.float64) / 255.0
        n += x.shape[0]
        total += x.sum(0)
        sq += (x * x).sum(0)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean * mean, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _long_tailed(train: FileSplit, num_classes: int, dcfg: DataConfig) -> tuple[FileSplit, np.ndarray]:
    counts = np.bincount(train.labels, minlength=num_classes)
    target = lt_counts(int(counts.min()), num_classes, dcfg.imbalance, dcfg.profile, dcfg.step_fraction)
    idx = select_lt_indices(train.labels, target, dcfg.split_seed)
    return FileSplit(train.root, [train.paths[i] for i in idx], train.labels[idx]), idx


def build_folder(dcfg: DataConfig) -> Dataset:
    """The :class:`Dataset` of an image folder (module docstring)."""
    from longtail.data.pipeline import loader_workers

    if not dcfg.root:
        raise ConfigError("data.name=folder reads your image folder: set data.root=/path/to/folder "
                          "(with train/<class>/ and test/<class>/ inside)")
    root = Path(dcfg.root).expanduser()
    classes, splits = scan_folder(root)
    train, idx = splits["train"], None
    if dcfg.long_tailed:
        train, idx = _long_tailed(train, len(classes), dcfg)
    workers = loader_workers(dcfg)
    source = _choose_source(dcfg, train)
    evals = {k: v for k, v in splits.items() if k != "train"}
    imbalance = float(dcfg.imbalance) if dcfg.long_tailed else None
    if source == "memory":
        arrays = {k: _in_memory(v, dcfg.image_size, workers) for k, v in [("train", train), *evals.items()]}
        sizes = {a.images.shape[1:3] for a in arrays.values()}
        if len(sizes) > 1:
            raise DataError(f"the splits of {root} have images of different sizes ({sorted(sizes)}); set "
                            f"data.image_size=N to resize them all to N x N")
        h, w = sizes.pop()
        if h != w:
            raise DataError(f"the images of {root} are {w}x{h}; the in-memory source needs square images: set "
                            f"data.image_size=N to resize them to N x N")
        mean, std = _mean_std(arrays["train"].images)
        return Dataset("folder", len(classes), classes, arrays["train"], arrays["test"], val=arrays.get("val"),
                       train_indices=idx, mean=mean, std=std, image_size=int(h), verified=False,
                       imbalance=imbalance)
    if dcfg.check_images:
        from longtail.data.imagecheck import check_images

        for split in (train, *evals.values()):
            check_images(split, workers=workers)
    return Dataset("folder", len(classes), classes, train, splits["test"], val=splits.get("val"), train_indices=idx,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=dcfg.image_size or LOADER_SIZE, verified=False,
                   imbalance=imbalance)
