"""Checking, before training starts, that every image of a file split decodes (``data.check_images``).

Without the check a truncated or non-image file stops a run hours in, at the first batch that holds it.
:func:`check_images` opens and decodes every image of a :class:`~longtail.data.base.FileSplit` with
Pillow, collects every failure and raises one :class:`~longtail.errors.DataError` naming how many images
fail, the first few (with their list line, or their path when the split has no list file) and why.

Speed:

* Images are decoded by a thread pool (Pillow releases the GIL while it decodes), one thread per loader
  worker.
* A JPEG is decoded at 1/8 scale (``Image.draft``). That still reads the whole file: libjpeg's reduced
  scale only shortens the inverse DCT and colour conversion; it still parses every marker and
  entropy-decodes every block of every scan (baseline and progressive alike), so a file cut short or
  without its end marker fails exactly as in a full decode (the tests cut files at several points).
  Damage that libjpeg merely warns about (e.g. a zeroed tail of full length) passes either way, as it
  does in the data loader. It halves the check's time on 500x375 photos. Other formats are decoded in
  full. As in the data loader, the image is then converted to RGB.
* Files that passed are cached, keyed by (path, size, mtime_ns), so a later check of the same split (the
  next run, ``eval``, ``extract``, ``predict``) only ``stat``\\s the files; a replaced or touched file is
  decoded again. Failures are not cached. The cache is one JSON file per dataset root and list file under
  ``$LONGTAIL_CACHE/image_checks/`` (default ``~/.cache/longtail/image_checks/``), never in the dataset
  root, which is often read-only. It is written atomically; a damaged cache file is ignored and rebuilt;
  if the cache folder cannot be written the check simply runs in full each time. Like any size and
  modification-time cache, it can be fooled by a rewrite of the same size whose mtime was set back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

from PIL import Image, UnidentifiedImageError

from longtail.data.base import FileSplit
from longtail.data.build import cache_root
from longtail.errors import DataError
from longtail.fileio import atomic_write

__all__ = ["cache_path", "check_images", "find_undecodable", "image_check_dir"]

MAX_SHOWN = 5  # failures named in the error
CACHE_VERSION = 1
_MAX_CHUNK = 64  # images per thread-pool task: few tasks, yet Ctrl-C waits for at most one chunk per thread

PathLike = Union[str, "os.PathLike[str]"]
Stamp = tuple[int, int]  # (size, mtime_ns)


def image_check_dir() -> Path:
    """The folder of the image-check caches: ``$LONGTAIL_CACHE/image_checks``, else
    ``~/.cache/longtail/image_checks``."""
    return cache_root() / "image_checks"


def _key(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def cache_path(root: PathLike, list_path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> Path:
    """The cache file of the images of ``root`` listed in ``list_path`` (or of the whole root without one)."""
    ident = json.dumps([_key(root), _key(list_path)])
    digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(list_path).stem if list_path else Path(_key(root)).name)[:40]
    return Path(cache_dir if cache_dir is not None else image_check_dir()) / f"{label or 'root'}-{digest}.json"


def _load_cache(path: Path, ident: dict) -> dict[str, Stamp]:
    """The cached entries, or an empty cache when the file is missing, unreadable, damaged or another's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or {k: data.get(k) for k in ident} != ident:
            return {}
        files = data.get("files")
        if not isinstance(files, dict):
            return {}
        return {k: (v[0], v[1]) for k, v in files.items()
                if isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)}
    except Exception:  # a cache can never be a reason to stop: anything wrong with it means "no cache"
        return {}


def _save_cache(path: Path, ident: dict, entries: dict[str, Stamp]) -> None:
    text = json.dumps({**ident, "files": {k: list(v) for k, v in entries.items()}}, separators=(",", ":"))
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=False)
    except OSError:  # read-only or missing home, full disk: the next check decodes again, that is all
        pass


def _decode(path: str) -> tuple[int, int]:
    """Decode the image at ``path`` completely (JPEG at 1/8 scale, see the module docstring); raise if it cannot.

    Returns the size decoded at (width, height).
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(None, (1, 1))  # the smallest scale libjpeg offers (1/8 on each side)
        im.load()
        return im.convert("RGB").size  # converted as the data loader converts every image


def _reason(e: BaseException, size: Optional[int]) -> str:
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format)"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return e.strerror  # e.g. "No such file or directory", "Permission denied"
    text = " ".join(str(e).split())  # keep the error on one line
    if isinstance(e, OSError) and text:
        return text  # Pillow's own words: "image file is truncated (...)", "broken data stream ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_chunk(root: str, items: list[tuple[int, str]], cached: dict[str, Stamp]
                 ) -> tuple[list[tuple[str, Stamp]], list[tuple[int, str]], int]:
    """Check ``(index, relative path)`` items: (newly passed with their stamps, failures, decodes run)."""
    passed, failed, decoded = [], [], 0
    for i, rel in items:
        full = os.path.join(root, rel)
        size = None
        try:
            st = os.stat(full)  # before decoding: a file changed meanwhile gets a new stamp and is checked again
            size, stamp = st.st_size, (st.st_size, st.st_mtime_ns)
            if cached.get(rel) == stamp:
                continue
            decoded += 1
            _decode(full)
        except Exception as e:  # Pillow raises many types for damaged files; every one means "cannot decode"
            failed.append((i, _reason(e, size)))
            continue
        passed.append((rel, stamp))
    return passed, failed, decoded


def find_undecodable(split: FileSplit, *, list_path: Optional[PathLike] = None, workers: int = 1,
                     cache_dir: Optional[PathLike] = None) -> tuple[list[tuple[int, str]], int]:
    """Decode every image of ``split`` that the cache does not vouch for.

    Args:
        split: the images (``split.root / split.paths[i]``).
        list_path: the list file the split was read from, if any (part of the cache's identity).
        workers: decoding threads (0 or 1: decode in this thread).
        cache_dir: the cache folder (default :func:`image_check_dir`).

    Returns:
        (failures as ``(index into split.paths, reason)`` in split order, number of images decoded).
    """
    root = os.fspath(split.root)
    ident = {"version": CACHE_VERSION, "root": _key(root), "list": _key(list_path)}
    path = cache_path(root, list_path, cache_dir)
    cached = _load_cache(path, ident)
    items = list(enumerate(split.paths))
    workers = max(1, int(workers))
    size = max(1, min(_MAX_CHUNK, len(items) // (4 * workers)))
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    if workers == 1 or len(chunks) <= 1:
        results = [_check_chunk(root, c, cached) for c in chunks]
    else:
        pool = ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="longtail-imagecheck")
        try:
            futures = [pool.submit(_check_chunk, root, c, cached) for c in chunks]
            results = [f.result() for f in futures]
        finally:  # on Ctrl-C or an error: drop the queued chunks, let the running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
    passed = [p for r in results for p in r[0]]
    failures = [f for r in results for f in r[1]]
    decoded = sum(r[2] for r in results)
    if passed or any(split.paths[i] in cached for i, _ in failures):
        entries = dict(cached)
        entries.update(passed)
        for i, _ in failures:
            entries.pop(split.paths[i], None)
        _save_cache(path, ident, entries)  # saved even when some fail: after a fix only those are decoded
    return failures, decoded


def check_images(split: FileSplit, *, list_path: Optional[PathLike] = None, workers: int,
                 cache_dir: Optional[PathLike] = None) -> None:
    """Raise one :class:`DataError` if any image of ``split`` cannot be decoded (see the module docstring).

    Args:
        split: the images to check.
        list_path: the list file the split was read from: ``split.paths[i]`` is its line ``i + 1`` (as
            :func:`~longtail.data.listfile.read_list_file` returns it). Failures are named by list line;
            without a list file (an image folder) by their path.
        workers: decoding threads (``loader_workers(data_cfg)``; 0 means one).
        cache_dir: where the cache of checked files goes (default :func:`image_check_dir`).

    Raises:
        DataError: naming how many images fail, the first few with the reason, and what to do.
    """
    failures, _ = find_undecodable(split, list_path=list_path, workers=workers, cache_dir=cache_dir)
    if not failures:
        return
    root = Path(split.root)
    shown = "; ".join((f"line {i + 1}: " if list_path is not None else "") + f"{root / split.paths[i]} ({why})"
                      for i, why in failures[:MAX_SHOWN])
    more = f"; and {len(failures) - MAX_SHOWN} more" if len(failures) > MAX_SHOWN else ""
    where = f"listed in {list_path}" if list_path is not None else f"under {root}"
    fix = "replace them or remove their lines from the list" if list_path is not None else "replace or remove them"
    raise DataError(
        f"{len(failures)} of {len(split.paths)} images {where} cannot be decoded: {shown}{more}. Fix them: {fix}; "
        "or set data.check_images=false to skip this check (training then stops at the first bad image)."
    )
