"""Writing files so that nothing is ever half-written: a temporary file in the same folder, flushed to
disk, given the mode a plain ``open()`` would, then renamed over the target (atomic on POSIX). Every
file longtail writes (run directories, checkpoints, features, caches, download records) goes through
:func:`atomic_write`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "refuse_overwrite",
           "OVERWRITE_HINT"]

#: how every refusal to replace an output ends
OVERWRITE_HINT = "pass --overwrite to replace it (nothing was changed)"


def refuse_overwrite(path: str | Path, what: str, overwrite: bool = False) -> None:
    """Raise :class:`~longtail.errors.OutputExistsError` when ``path`` exists and ``overwrite`` is false: the one
    way every command refuses to replace a finished output (``what`` says what the path holds)."""
    from longtail.errors import OutputExistsError

    if not overwrite and Path(path).exists():
        raise OutputExistsError(f"{path} already holds {what}; {OVERWRITE_HINT}")


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, durable: bool = True) -> Path:
    """Create ``path`` by ``write(tmp)`` on a temporary path next to it, then rename: readers see the old
    file or the new one, never a partial one; on any error the temporary file is removed and ``path``
    is untouched. ``durable`` flushes the file to disk before the rename (skip it for caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """:func:`atomic_write` of ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=1))
