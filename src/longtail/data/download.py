"""Checksums, cached verification, downloads and safe archive extraction.

Nothing here trusts a file it has not checked: downloads land in a ``*.partial`` file next to their
destination and are renamed into place only after their checksum matches; archives are inspected member
by member before anything is written; a file whose checksum differs is reported and left untouched.

Verifying a local copy hashes every member once (CIFAR: about 180 MB, a second or two). The result is
cached in ``<dataset folder>/.longtail_verified.json`` as ``{file name: {size, mtime_ns, algorithm,
digest}}``; an entry counts only while the file's size and modification time are unchanged, so
replacing or touching a file re-hashes it. If the dataset folder is read-only the cache goes to
``~/.cache/longtail/verified/<hash of the folder's absolute path>.json``; if that cannot be written
either, files are simply re-verified on every run. The cache protects against damaged or replaced
files, not against someone who forges modification times on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

from tqdm import tqdm

from longtail.fileio import atomic_write_text
from longtail.errors import ChecksumError, DataError

CACHE_NAME = ".longtail_verified.json"
CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above this and memory stays small

DATA_ROOT_HINT = (
    "To use a copy you already have, point longtail at the folder that contains it: pass "
    "data.root=/path/to/data or run `export LONGTAIL_DATA=/path/to/data`."
)


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks.

    Args:
        path: the file.
        algo: any :mod:`hashlib` name (``"md5"``, ``"sha1"``, ``"sha256"``).
    """
    try:
        h = hashlib.new(algo)
    except ValueError as e:
        raise ValueError(f"unknown hash algorithm {algo!r}; use one of md5, sha1, sha256") from e
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class VerifyCache:
    """Remembers which files of one folder already passed their checksum.

    Args:
        folder: the dataset folder; entries are keyed by paths relative to it.
        fallback_dir: where the cache goes when ``folder`` is read-only
            (default ``~/.cache/longtail/verified``).
    """

    def __init__(self, folder: Path, fallback_dir: Optional[Path] = None) -> None:
        self.folder = Path(folder)
        fallback_dir = Path(fallback_dir) if fallback_dir else Path.home() / ".cache" / "longtail" / "verified"
        key = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:16]
        self.fallback_path = fallback_dir / f"{key}.json"
        self.path = self.folder / CACHE_NAME
        self.entries: dict[str, dict] = {}
        # both places are read: a folder that became read-only may hold an old cache next to a newer
        # fallback; every entry is checked against the file's size and mtime anyway
        for p in (self.path, self.fallback_path):
            if p.is_file():
                try:
                    loaded = json.loads(p.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # an unreadable cache is just an empty one: files get re-hashed
                if isinstance(loaded, dict):
                    self.entries.update({k: v for k, v in loaded.items() if isinstance(v, dict)})

    def _name(self, path: Path) -> str:
        path = Path(path)
        try:
            return path.resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def is_verified(self, path: Path, algo: str, expected: str) -> bool:
        """True if ``path`` was verified against ``expected`` and has not changed since."""
        e = self.entries.get(self._name(path))
        if e is None:
            return False
        st = os.stat(path)
        return (
            e.get("size") == st.st_size
            and e.get("mtime_ns") == st.st_mtime_ns
            and e.get("algorithm") == algo
            and e.get("digest") == expected.lower()
        )

    def record(self, path: Path, algo: str, digest: str) -> None:
        """Remember a verified file and save the cache."""
        st = os.stat(path)
        self.entries[self._name(path)] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "algorithm": algo,
            "digest": digest.lower(),
        }
        self.save()

    def save(self) -> Optional[Path]:
        """Write the cache; returns where it went, or None if nowhere was writable."""
        text = json.dumps(self.entries, indent=1, sort_keys=True)
        try:
            atomic_write_text(self.path, text)
            return self.path
        except OSError:
            pass
        try:
            self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.fallback_path, json.dumps({"_folder": str(self.folder.resolve()), **self.entries}))
            return self.fallback_path
        except OSError:
            return None  # nothing writable: the files are simply re-verified next time


def checksum_message(path: Path, algo: str, expected: str, actual: str) -> str:
    return (
        f"{path}: {algo.upper()} checksum mismatch: expected {expected}, got {actual}. "
        "The file was not used and was left where it is. If it is a damaged or partial copy, delete it "
        "and download the official file again (longtail downloads it when data.download=true); if you "
        "changed it on purpose, set data.verify=false (results are then marked data_verified=false)."
    )


def verify_file(path: Path, algo: str, expected: str, cache: Optional[VerifyCache] = None) -> str:
    """Check a file against its published checksum.

    Args:
        path: the file.
        algo: hash algorithm of ``expected``.
        expected: the published hex digest.
        cache: if given, a file verified before and unchanged since is not hashed again, and a newly
            verified file is recorded.

    Returns:
        The digest (equal to ``expected``).

    Raises:
        ChecksumError: the digest differs; the file is neither used nor deleted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; it is needed to verify the dataset")
    if cache is not None and cache.is_verified(path, algo, expected):
        return expected.lower()
    actual = file_digest(path, algo)
    if actual != expected.lower():
        raise ChecksumError(checksum_message(path, algo, expected, actual))
    if cache is not None:
        cache.record(path, algo, actual)
    return actual


def verify_members(folder: Path, checksums: dict[str, tuple[str, str]], names: Iterable[str]) -> None:
    """Verify ``names`` (paths relative to ``folder``) against ``checksums`` with one shared cache.

    Names without a known checksum are skipped.
    """
    cache = VerifyCache(folder)
    for name in names:
        if name in checksums:
            algo, expected = checksums[name]
            verify_file(Path(folder) / name, algo, expected, cache)


def download_url(
    url: str,
    dest: Path,
    algo: str,
    expected: str,
    timeout: float = 60,
    *,
    searched: Optional[Path] = None,
    layout_hint: str = "",
) -> Path:
    """Download ``url`` to ``dest``, verified.

    The bytes go to ``<dest>.<random>.partial`` in the same folder and are renamed to ``dest`` only once
    their checksum matches. A download that fails midway is removed; one with a wrong checksum is kept as
    the ``.partial`` file (named in the error) for inspection and never renamed into place.

    Args:
        url: http(s) or file URL.
        dest: final path of the file.
        algo: hash algorithm of ``expected``.
        expected: published hex digest.
        timeout: socket timeout in seconds.
        searched: the folder where the dataset was looked for (named in the error).
        layout_hint: what that folder should contain, e.g. "cifar-10-batches-py or cifar-10-batches-bin".

    Raises:
        DataError: the URL could not be fetched (no network, HTTP error).
        ChecksumError: the downloaded bytes have the wrong checksum.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".partial")
    except OSError as e:
        raise DataError(f"cannot write to {dest.parent} to download {url} ({e}). {DATA_ROOT_HINT}") from e
    tmp = Path(tmp_name)
    h = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                # disable=None: a progress bar on a terminal, nothing in logs and CI
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                    for chunk in iter(lambda: resp.read(CHUNK), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)  # never leave half a download behind
        where = searched if searched is not None else dest.parent
        layout = f" That folder should contain {layout_hint}." if layout_hint else ""
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {url} ({reason}). The dataset was not found under {where}, so longtail "
            f"tried to download it. If this machine has no internet access, copy the data over by hand. "
            f"{DATA_ROOT_HINT}{layout}"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    actual = h.hexdigest()
    if actual != expected.lower():
        raise ChecksumError(
            f"the download of {url} is corrupt: {algo.upper()} expected {expected}, got {actual}. "
            f"It was kept as {tmp} for inspection and not used; delete it and try again."
        )
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------
# Safe extraction


def _unsafe_name(name: str) -> Optional[str]:
    """Why a member name is unsafe, or None."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "'..' path component"
    return None


def _link_escapes(member_name: str, target: str, hard: bool) -> bool:
    """True if a link's target lies outside the extraction folder."""
    target = target.replace("\\", "/")
    if target.startswith("/"):
        return True
    # symlinks resolve relative to the link's folder, hard links relative to the archive root
    base = [] if hard else list(PurePosixPath(member_name.replace("\\", "/")).parent.parts)
    depth = len(base)
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


def _unsafe(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"refusing to extract {archive}: member {member!r} is unsafe ({why}); nothing was extracted")


def _check_tar(tf: tarfile.TarFile, archive: Path) -> None:
    for m in tf.getmembers():
        why = _unsafe_name(m.name)
        if why is None and (m.isdev() or not (m.isfile() or m.isdir() or m.issym() or m.islnk())):
            why = "device or special file"
        if why is None and (m.issym() or m.islnk()) and _link_escapes(m.name, m.linkname, m.islnk()):
            why = f"link to {m.linkname!r} outside the extraction folder"
        if why:
            raise _unsafe(archive, m.name, why)


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        why = _unsafe_name(info.filename)
        mode = info.external_attr >> 16
        if why is None and stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            if _link_escapes(info.filename, target, hard=False):
                why = f"link to {target!r} outside the extraction folder"
        if why is None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            why = "device or special file"
        if why:
            raise _unsafe(archive, info.filename, why)


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a .tar, .tar.gz/.tgz or .zip archive into ``dest`` after checking every member.

    Rejected (DataError naming the member; nothing is extracted): absolute paths, ``..`` components,
    links whose target lies outside ``dest``, device and other special files. Tar archives are additionally
    extracted with ``tarfile``'s ``"data"`` filter where this Python has it (3.12+, and 3.8-3.11 patch
    releases from mid-2023). Members are first extracted into a temporary folder inside ``dest`` and their
    top-level entries then renamed into place, so an interrupted extraction never leaves a half-filled
    dataset folder behind.

    Returns:
        The top-level paths created in ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    lower = archive.name.lower()
    if not lower.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
        raise DataError(f"cannot extract {archive}: expected a .tar, .tar.gz, .tgz or .zip archive")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                zf.extractall(tmp)
        else:
            with tarfile.open(archive, "r:*") as tf:
                _check_tar(tf, archive)
                if hasattr(tarfile, "data_filter"):
                    try:
                        tf.extractall(tmp, filter="data")
                    except tarfile.FilterError as e:
                        raise DataError(f"refusing to extract {archive}: {e}") from e
                else:
                    tf.extractall(tmp)  # our own checks above cover what the filter would
        created = []
        tops = sorted(tmp.iterdir())
        for top in tops:
            if (dest / top.name).exists():
                raise DataError(
                    f"cannot extract {archive}: {dest / top.name} already exists. Remove it (or move it away) "
                    "and run again."
                )
        for top in tops:
            os.replace(top, dest / top.name)
            created.append(dest / top.name)
        return created
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{archive} is not a readable archive ({e}); delete it and download it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
