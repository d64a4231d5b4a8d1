"""CIFAR-10 and CIFAR-100 from either official distribution (docs/protocol.md §2, §2.1).

Both the python version (pickled batches) and the binary version (fixed-size records) are read into
uint8 images ``[N, 32, 32, 3]`` in release order, so both give the same long-tailed split. CIFAR-100
uses the fine labels.

About pickle: the python version *is* a set of pickles, so reading it means unpickling. That is
acceptable here only because the files are the official ones, verified against their published MD5
before they are opened (a mismatch raises :class:`~longtail.errors.ChecksumError` and nothing is
unpickled). As a second line of defence the unpickler only resolves the few numpy names an array needs,
so even an unverified file (``verify=False``) cannot run arbitrary code through pickle's globals.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from longtail.data.base import ArraySplit
from longtail.data.download import download_url, safe_extract, verify_file, verify_members
from longtail.errors import ConfigError, DataError

NAMES = ("cifar10", "cifar100")
FORMATS = ("auto", "python", "binary")
BASE_URL = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table
    tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split()
)


@dataclass(frozen=True)
class Layout:
    """Where one official distribution keeps its files."""

    folder: str
    archive: str
    archive_md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str  # class names; optional (the built-in names are used when it is absent)


LAYOUTS: dict[tuple[str, str], Layout] = {
    ("cifar10", "python"): Layout(
        "cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
    ),
    ("cifar10", "binary"): Layout(
        "cifar-10-batches-bin", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), "batches.meta.txt",
    ),
    ("cifar100", "python"): Layout(
        "cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",), ("test",), "meta",
    ),
    ("cifar100", "binary"): Layout(
        "cifar-100-binary", "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
        ("train.bin",), ("test.bin",), "fine_label_names.txt",
    ),
}

# The published checksums of the members (docs/protocol.md §2.1): folder, file, algorithm, hex digest.
# Files not listed (``batches.meta.txt``, the label-name text files) carry only class names and are not
# verified.
_CHECKSUM_TABLE = """
cifar-10-batches-py   data_batch_1      md5   c99cafc152244af753f735de768cd75f
cifar-10-batches-py   data_batch_2      md5   d4bba439e000b95fd0a9bffe97cbabec
cifar-10-batches-py   data_batch_3      md5   54ebc095f3ab1f0389bbae665268c751
cifar-10-batches-py   data_batch_4      md5   634d18415352ddfa80567beed471001a
cifar-10-batches-py   data_batch_5      md5   482c414d41f54cd18b22e5b47cb7c3cb
cifar-10-batches-py   test_batch        md5   40351d587109b95175f43aff81a1287e
cifar-10-batches-py   batches.meta      md5   5ff9c542aee3614f3951f8cda6e48888
cifar-10-batches-bin  data_batch_1.bin  sha1  aadd24acce27caa71bf4b10992e9e7b2d74c2540
cifar-10-batches-bin  data_batch_2.bin  sha1  c0ba65cce70568cd57b4e03e9ac8d2a5367c1795
cifar-10-batches-bin  data_batch_3.bin  sha1  1dd00a74ab1d17a6e7d73e185b69dbf31242f295
cifar-10-batches-bin  data_batch_4.bin  sha1  aab85764eb3584312d3c7f65fd2fd016e36a258e
cifar-10-batches-bin  data_batch_5.bin  sha1  26e2849e66a845b7f1e4614ae70f4889ae604628
cifar-10-batches-bin  test_batch.bin    sha1  67eb016db431130d61cd03c7ad570b013799c88c
cifar-100-python      train             md5   16019d7e3df5f24257cddd939b257f8d
cifar-100-python      test              md5   f0ef6b0ae62326f3e7ffdfab6717acfc
cifar-100-python      meta              md5   7973b15100ade9c7d40fb424638fde48
cifar-100-binary      train.bin         sha1  e207cd2e05b73b1393c74c7f5e7bea451d63e08e
cifar-100-binary      test.bin          sha1  8fb6623e830365ff53cf14adec797474f5478006
"""


def _checksums(table: str) -> dict[str, dict[str, tuple[str, str]]]:
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for line in table.strip().splitlines():
        folder, name, algo, digest = line.split()
        out.setdefault(folder, {})[name] = (algo, digest)
    return out


#: ``{folder: {file: (algorithm, hex digest)}}``
KNOWN_CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = _checksums(_CHECKSUM_TABLE)


@dataclass
class CifarData:
    """Both splits of one CIFAR dataset, in release order.

    Shape:
        train.images / test.images: uint8 [N, 32, 32, 3]; labels: int64 [N] (fine labels for CIFAR-100).
    """

    train: ArraySplit
    test: ArraySplit
    class_names: list[str]
    fmt: str  # "python" or "binary": the distribution that was read
    verified: bool  # every data file matched its published checksum (False when verify=False)
    folder: Optional[Path] = None


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of a label sequence written one label per line (order-sensitive)."""
    text = "".join(f"{int(v)}\n" for v in np.asarray(labels).ravel())
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Finding (or downloading) the files


def _check_args(name: str, fmt: str) -> None:
    if name not in NAMES:
        raise ConfigError(f"unknown CIFAR dataset {name!r}; use one of {NAMES}")
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {FORMATS} (got {fmt!r})")


def _layout_hint(name: str) -> str:
    return f"{LAYOUTS[(name, 'python')].folder} or {LAYOUTS[(name, 'binary')].folder}"


def locate_cifar(
    name: str, root: Path, fmt: str = "auto", *, download: bool = True, verify: bool = True
) -> tuple[Path, str]:
    """The official folder to read and its format, downloading and extracting the archive if needed.

    Search order under ``root``: ``root`` itself if it is an official folder; the official folder(s)
    (python before binary for ``fmt="auto"``); an official archive already lying in ``root``; then, with
    ``download``, the official archive from the CIFAR site (python version for ``"auto"``).
    """
    _check_args(name, fmt)
    root = Path(root).expanduser()
    formats = ("python", "binary") if fmt == "auto" else (fmt,)
    for (ds, f), lay in LAYOUTS.items():
        if root.name == lay.folder:
            if ds != name:
                raise ConfigError(
                    f"{root} is the {ds} folder but the dataset asked for is {name}; fix data.root or data.name"
                )
            if fmt not in ("auto", f):
                raise ConfigError(
                    f"{root} holds the {f} version of {name} but data.format={fmt}; use data.format={f} or auto"
                )
            if not root.is_dir():
                raise DataError(f"{root} does not exist or is not a folder")
            return root, f
    for f in formats:
        if (root / LAYOUTS[(name, f)].folder).is_dir():
            return root / LAYOUTS[(name, f)].folder, f
    for f in formats:
        lay = LAYOUTS[(name, f)]
        if (root / lay.archive).is_file():  # an archive copied over by hand
            if verify:
                verify_file(root / lay.archive, "md5", lay.archive_md5)
            return _extract(name, root / lay.archive, root, f), f
    if not download:
        raise DataError(
            f"{name} was not found under {root}: expected a folder {_layout_hint(name)} (or the official archive "
            f"{LAYOUTS[(name, formats[0])].archive}) there. Point data.root (or $LONGTAIL_DATA) at the folder that "
            "contains it, or set data.download=true."
        )
    lay = LAYOUTS[(name, formats[0])]
    archive = download_url(
        BASE_URL + lay.archive, root / lay.archive, "md5", lay.archive_md5,
        searched=root, layout_hint=_layout_hint(name),
    )
    return _extract(name, archive, root, formats[0]), formats[0]


def _extract(name: str, archive: Path, root: Path, fmt: str) -> Path:
    safe_extract(archive, root)
    folder = root / LAYOUTS[(name, fmt)].folder
    if not folder.is_dir():
        raise DataError(f"{archive} did not contain the folder {folder.name}; it is not the official archive")
    return folder


# ---------------------------------------------------------------------------------------------------------
# Reading


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy uint8 array needs; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # written by numpy 1.x (the official files)
        ("numpy._core.multiarray", "_reconstruct"),  # written by numpy 2.x
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path} is not a readable CIFAR python-version batch ({e}); download the official file again"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a dict; it is not a CIFAR python-version batch")
    return obj


def _pixels_to_hwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] rows (1024 R, then 1024 G, then 1024 B values, each plane row-major) -> [N, 32, 32, 3]."""
    planes = rows.reshape(-1, 3, 1024)
    # np.stack over the three planes is several times faster than a contiguous copy of a transpose
    return np.stack([planes[:, 0], planes[:, 1], planes[:, 2]], axis=-1).reshape(-1, 32, 32, 3)


def _read_python(folder: Path, files: tuple[str, ...], label_key: bytes) -> ArraySplit:
    images, labels = [], []
    for name in files:
        d = _load_pickle(folder / name)
        data, lab = d.get(b"data"), d.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / name}: b'data' is not a uint8 [N, 3072] array")
        if lab is None or len(lab) != len(data):
            raise DataError(f"{folder / name}: {label_key!r} is missing or does not have one label per image")
        images.append(_pixels_to_hwc(data))
        labels.append(np.asarray(lab, dtype=np.int64))
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _read_binary(folder: Path, files: tuple[str, ...], n_label_bytes: int) -> ArraySplit:
    record = n_label_bytes + 3072
    images, labels = [], []
    for name in files:
        raw = np.fromfile(folder / name, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{folder / name}: {raw.size} bytes is not a whole number of {record}-byte records")
        recs = raw.reshape(-1, record)
        labels.append(recs[:, n_label_bytes - 1].astype(np.int64))  # CIFAR-100: coarse, then fine
        images.append(_pixels_to_hwc(recs[:, n_label_bytes:]))
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _class_names(name: str, fmt: str, folder: Path) -> list[str]:
    builtin = list(CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES)
    path = folder / LAYOUTS[(name, fmt)].meta
    if not path.is_file():
        return builtin  # e.g. a binary copy rebuilt without its text file; the names are fixed anyway
    if fmt == "python":
        raw = _load_pickle(path).get(b"label_names" if name == "cifar10" else b"fine_label_names", [])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    else:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) != len(builtin):
        raise DataError(f"{path} lists {len(names)} class names, expected {len(builtin)}")
    return names


def load_cifar(name: str, root: Path, *, fmt: str = "auto", download: bool = True, verify: bool = True) -> CifarData:
    """Read CIFAR-10 or CIFAR-100 from an official distribution.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: folder holding ``cifar-10-batches-py`` / ``cifar-10-batches-bin`` (or the CIFAR-100
            folders), or one of those folders itself.
        fmt: ``"auto"`` (whichever exists, python preferred; downloads the python version if none),
            ``"python"`` or ``"binary"``.
        download: download the official archive when no local copy is found.
        verify: check every data file against its published checksum (cached after the first time).
            With False nothing is hashed and ``CifarData.verified`` is False.

    Raises:
        ChecksumError: a data file differs from the official one (it is not read, and not deleted).
        DataError: files are missing or malformed, or the download failed.
    """
    folder, fmt = locate_cifar(name, root, fmt, download=download, verify=verify)
    lay = LAYOUTS[(name, fmt)]
    missing = [f for f in lay.train + lay.test if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder} is incomplete: missing {', '.join(missing)}. Copy the whole official folder again "
            "(or delete it so that longtail downloads it)."
        )
    if verify:  # before anything is unpickled
        present = [f for f in lay.train + lay.test + (lay.meta,) if (folder / f).is_file()]
        verify_members(folder, KNOWN_CHECKSUMS[lay.folder], present)
    if fmt == "python":
        key = b"labels" if name == "cifar10" else b"fine_labels"
        train, test = _read_python(folder, lay.train, key), _read_python(folder, lay.test, key)
    else:
        n_label_bytes = 1 if name == "cifar10" else 2
        train, test = _read_binary(folder, lay.train, n_label_bytes), _read_binary(folder, lay.test, n_label_bytes)
    class_names = _class_names(name, fmt, folder)
    for split, what in ((train, "train"), (test, "test")):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            raise DataError(f"{folder}: {what} labels outside 0..{len(class_names) - 1}; the files are not {name}")
    return CifarData(train, test, class_names, fmt, bool(verify), folder)
