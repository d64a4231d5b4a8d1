"""Config files that inherit: ``base: other.yaml`` (or a list of bases, applied in order).

A base path is relative to the file that names it. The file's own keys override its bases', merged
section by section: a nested mapping merges key by key, a list or a scalar replaces, an empty section
(``optim:`` with nothing under it) changes nothing. The ``method`` section merges the same way while it
keeps the base's method; a file that selects another method (``method.name`` differs from the base's)
replaces the base's method section as a whole, since the base's parameters belong to the other method.
Bases may have bases; a cycle is an error naming the files. The merged mapping holds no ``base`` key, so
a run's resolved ``config.yaml`` stands alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longtail.config.yamlio import read_yaml_file
from longtail.errors import ConfigError

__all__ = ["read_config_file", "merge"]

BASE_KEY = "base"


def _default_method_name() -> str:
    from longtail.config.schema import MethodConfig

    return MethodConfig().name


def _switches_method(base: dict, child: dict) -> bool:
    """True when ``child``'s method section names another method than ``base``'s."""
    if "name" not in child or child["name"] is None:
        return False
    return str(child["name"]).strip() != str(base.get("name") or _default_method_name()).strip()


def merge(base: dict, child: dict, prefix: str = "") -> dict:
    """``base`` updated by ``child`` (neither is changed): mappings merge key by key, anything else
    replaces; the top-level ``method`` section is replaced when ``child`` selects another method."""
    out = dict(base)
    for k, v in child.items():
        old = out.get(k)
        if isinstance(old, dict) and v is None:
            continue  # `section:` with nothing under it: nothing to change
        if isinstance(old, dict) and isinstance(v, dict):
            if not prefix and k == "method" and _switches_method(old, v):
                out[k] = dict(v)
            else:
                out[k] = merge(old, v, f"{prefix}{k}.")
        else:
            out[k] = v
    return out


def _base_paths(path: Path, spec: Any) -> list[Path]:
    specs = spec if isinstance(spec, list) else [spec]
    if not specs or not all(isinstance(s, str) and s.strip() for s in specs):
        raise ConfigError(f"{path}: 'base' must name a YAML file or a list of them, relative to this file "
                          f"(got {spec!r})")
    out = []
    for s in specs:
        p = Path(s.strip()).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise ConfigError(f"{path}: base '{s}' not found (looked for {p})")
        out.append(p)
    return out


def _resolve(path: Path, chain: list[Path], files: list[Path], empty_hint: str) -> dict:
    real = path.resolve()
    stack = [p.resolve() for p in chain]
    if real in stack:
        cycle = chain[stack.index(real):] + [path]
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in cycle)}; remove one of "
                          f"these base: entries")
    data = read_yaml_file(path)
    if data is None or data == {}:
        raise ConfigError(f"{path} is empty: {empty_hint}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys (got {type(data).__name__})")
    merged: dict = {}
    if BASE_KEY in data:
        data = dict(data)
        for base in _base_paths(path, data.pop(BASE_KEY)):
            merged = merge(merged, _resolve(base, chain + [path], files, empty_hint))
    files.append(path)
    return merge(merged, data)


def read_config_file(path: str | Path, empty_hint: str) -> tuple[dict, list[Path]]:
    """The mapping of a config file with its bases merged in, and the files read (bases first, each
    base after its own bases; the file itself last). ``empty_hint`` completes the message for an empty
    file: what such a file needs at least."""
    files: list[Path] = []
    data = _resolve(Path(path), [], files, empty_hint)
    return data, files
