"""List-file datasets: ImageNet-LT, Places-LT, iNaturalist 2018 (docs/protocol.md §4).

A list file is UTF-8 text, one sample per line: ``<relative_image_path> <label>``, separated by a single
space, 0-based integer labels, no header. A blank line at the end is allowed; a blank line elsewhere is an
error. Paths are joined onto the dataset root; they must be relative and, once ``path_prefix`` is applied,
stay inside the root (``a/../b.jpg`` is fine, ``../b.jpg`` or ``a/../../b.jpg`` is refused). This is decided
on the normalised path (``os.path.normpath``), without resolving links, so roots and subfolders that are
symbolic links work; the split holds the normalised paths (``a/../b.jpg`` is read as ``b.jpg``), so the
file read is the one checked, even where ``a`` is a link to another folder.

``path_prefix`` rule: the first path component of every listed path (everything up to and including the
first ``/``) is replaced by ``path_prefix``. A prefix may hold several components (``"places365_standard/
train"``) and the empty string drops the first component. A path without ``/`` is left unchanged. Example:
the list says ``train/airfield/00000001.jpg``; with ``path_prefix="data_256"`` it is read as
``data_256/airfield/00000001.jpg``. Copies that insert an extra level in the middle of the path
(``data_256/a/airfield/...``) need a list rewritten for them: only the first component is mapped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from longtail.data.base import FileSplit
from longtail.errors import DataError

_INT = re.compile(r"-?[0-9]+")
_INSIDE = "paths must be relative to the dataset root and stay inside it"
MAX_SHOWN = 5  # missing files named in an error


def apply_path_prefix(path: str, path_prefix: Optional[str]) -> str:
    """Replace the first component of ``path`` by ``path_prefix`` (see the module docstring)."""
    if path_prefix is None or "/" not in path:
        return path
    rest = path.split("/", 1)[1]
    prefix = path_prefix.strip("/")
    return f"{prefix}/{rest}" if prefix else rest


def inside_root(path: str) -> bool:
    """True if the relative ``path`` names something strictly inside the folder it is joined onto.

    Compared lexically (``os.path.normpath``), without resolving links, so a dataset whose root or
    subfolders are symbolic links keeps working; ``..`` that leaves the root, or a path naming the root
    itself (``a/..``), is refused.
    """
    norm = os.path.normpath(path)
    return not (os.path.isabs(norm) or norm in (".", "..") or norm.startswith(".." + os.sep))


def _bad(list_path: Path, n: int, line: str, why: str) -> DataError:
    return DataError(f"{list_path}, line {n}: {why}; got {line!r}. Each line must be '<relative_path> <label>'.")


def read_list_file(
    list_path: Path,
    root: Path,
    *,
    num_classes: Optional[int] = None,
    path_prefix: Optional[str] = None,
    check_files: bool = True,
) -> FileSplit:
    """Read a ``<relative_path> <label>`` list.

    Args:
        list_path: the list file.
        root: dataset root the paths are relative to.
        num_classes: if given, every label must be below it.
        path_prefix: replaces the first component of every listed path (module docstring).
        check_files: require every image to exist under ``root`` (a missing image is a hard error).

    Returns:
        FileSplit with the (prefix-mapped, normalised) paths in file order and int64 labels.

    Raises:
        DataError: a malformed line (named by line number), an empty list, or missing images.
    """
    list_path, root = Path(list_path), Path(root)
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist; check data.train_list / val_list / test_list")
    raw_lines = list_path.read_bytes().split(b"\n")
    while raw_lines and not raw_lines[-1].strip():  # trailing blank lines (and the final newline)
        raw_lines.pop()
    paths: list[str] = []
    labels: list[int] = []
    for n, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{list_path}, line {n}: not valid UTF-8 ({e})") from e
        line = line.removesuffix("\r")  # tolerate Windows line ends
        if n == 1:
            line = line.removeprefix("\ufeff")  # and a byte-order mark written by some editors
        if not line.strip():
            raise _bad(list_path, n, line, "blank line (blank lines are allowed only at the end)")
        fields = line.split(" ")
        if len(fields) != 2:
            raise _bad(list_path, n, line, f"expected 2 fields separated by one space, found {len(fields)}")
        path, label_text = fields
        if not path:
            raise _bad(list_path, n, line, "empty path")
        if path.startswith("/"):
            raise _bad(list_path, n, line, f"the path is absolute; {_INSIDE}")
        if not _INT.fullmatch(label_text):
            raise _bad(list_path, n, line, f"label {label_text!r} is not an integer")
        label = int(label_text)
        if label < 0:
            raise _bad(list_path, n, line, f"label {label} is negative (labels are 0-based)")
        if num_classes is not None and label >= num_classes:
            why = f"label {label} is out of range for {num_classes} classes (0..{num_classes - 1})"
            raise _bad(list_path, n, line, why)
        mapped = apply_path_prefix(path, path_prefix)
        if not inside_root(mapped):
            via = f" (read as {mapped!r} after data.path_prefix)" if mapped != path else ""
            what = "names the dataset root itself" if os.path.normpath(mapped) == "." else "leaves the dataset root"
            raise _bad(list_path, n, line, f"the path {path!r}{via} {what} {root}; {_INSIDE}")
        paths.append(os.path.normpath(mapped))  # what is read is what was checked, even past a linked folder
        labels.append(label)
    if not paths:
        raise DataError(f"list file {list_path} has no samples")
    if check_files:
        missing = [(n, p) for n, p in enumerate(paths, start=1) if not os.path.isfile(root / p)]
        if missing:
            shown = "; ".join(f"line {n}: {root / p}" for n, p in missing[:MAX_SHOWN])
            raise DataError(
                f"{len(missing)} of {len(paths)} images listed in {list_path} are missing under {root} ({shown}). "
                "Check data.root and data.path_prefix (the first path component of every listed path is "
                "replaced by it)."
            )
    return FileSplit(root=root, paths=paths, labels=np.asarray(labels, dtype=np.int64))


def check_disjoint(a: FileSplit, b: FileSplit, names: tuple[str, str] = ("train", "val")) -> None:
    """Raise DataError if any image appears in both splits (compared as normalised absolute paths)."""

    def key(split: FileSplit) -> dict[str, str]:
        return {os.path.normpath(os.path.abspath(split.root / p)): p for p in split.paths}

    ka, kb = key(a), key(b)
    common = sorted(ka.keys() & kb.keys())
    if common:
        raise DataError(
            f"the {names[0]} and {names[1]} lists share {len(common)} image(s), e.g. {ka[common[0]]}; "
            "they must be disjoint. Check that the lists belong together."
        )


def list_summary(split: FileSplit, num_classes: Optional[int] = None) -> dict[str, int]:
    """Image and class counts of a split.

    ``classes`` is ``num_classes`` if given, else the largest label + 1; ``min``/``max`` are the smallest and
    largest per-class counts over those classes (a class without images gives ``min`` 0).
    """
    labels = np.asarray(split.labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes or 0) if len(labels) else np.zeros(num_classes or 0, np.int64)
    return {
        "images": int(len(labels)),
        "classes": int(len(counts)),
        "min": int(counts.min()) if len(counts) else 0,
        "max": int(counts.max()) if len(counts) else 0,
    }
