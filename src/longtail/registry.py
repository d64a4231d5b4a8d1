"""Registries: the one place where longtail looks up anything a user can add (methods, datasets,
backbones, classifier heads, samplers, augmentation presets).

A registry maps a name to an entry (a class or a factory) and fills itself on first use: it imports the
module of the built-in entries, then the plugins a user declared (the ``plugins:`` config key, ``--plugin``
on the command line, or a package's ``longtail.<kind>`` entry points, e.g. ``longtail.methods``). An
unknown name is a :class:`~longtail.errors.ConfigError` that names the closest registered one.

This module imports no torch: the config can validate names against it; the registries' modules import
torch when they are loaded.

Adding an entry from your own module::

    from longtail.registry import METHODS

    @METHODS.register("my_method")
    class MyMethod(Method): ...

then ``plugins: [my_module]`` in the config (or ``longtail train --plugin my_module ...``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from longtail.errors import ConfigError

__all__ = ["Registry", "METHODS", "DATASETS", "BACKBONES", "HEADS", "SAMPLERS", "PRESETS", "load_plugins"]


def _closest(name: str, choices: Iterable[str]) -> Optional[str]:
    """The most similar choice (difflib's ratio above 0.6); ties go to the earlier one."""
    best, best_score = None, 0.6
    for c in choices:
        score = difflib.SequenceMatcher(None, name, c).ratio()
        if score > best_score:
            best, best_score = c, score
    return best


class Registry:
    """Name -> entry, filled by ``@registry.register(name)``.

    Args:
        kind: what the entries are, for messages ("method").
        key: the config key that names an entry ("method.name"), for messages.
        builtins: the module that registers the built-in entries (imported on first use).
        group: the entry-point group scanned on first use ("longtail.methods").
    """

    def __init__(self, kind: str, key: str, builtins: str, group: str) -> None:
        self.kind, self.key, self.builtins, self.group = kind, key, builtins, group
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, entry: Any = None) -> Callable:
        """Register ``entry`` under ``name``; without ``entry``, a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string (got {name!r})")

        def deco(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered; pick another name")
            self._entries[name] = obj
            return obj

        return deco(entry) if entry is not None else deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the built-in module registers into this registry while importing
        importlib.import_module(self.builtins)
        for ep in _entry_points(self.group):
            try:
                ep.load()
            except Exception as e:  # a broken third-party plugin must say which one
                raise ConfigError(f"the {self.group} entry point '{ep.name}' ({ep.value}) failed to load: "
                                  f"{type(e).__name__}: {e}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order (built-ins first)."""
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Any:
        """The entry of ``name``; a ConfigError naming the closest registered name otherwise."""
        self._load()
        if name not in self._entries:
            close = _closest(str(name), self._entries)
            hint = f"; did you mean '{close}'?" if close else "."
            raise ConfigError(f"{self.key}: unknown {self.kind} '{name}'{hint} "
                              f"Available: {', '.join(self._entries)}")
        return self._entries[name]

    def items(self) -> list[tuple[str, Any]]:
        self._load()
        return list(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    eps = entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # pragma: no cover - Python 3.9


METHODS = Registry("method", "method.name", "longtail.methods", "longtail.methods")
DATASETS = Registry("dataset", "data.name", "longtail.data.datasets", "longtail.datasets")
BACKBONES = Registry("backbone", "model.backbone", "longtail.models.backbones", "longtail.backbones")
HEADS = Registry("classifier head", "model.head", "longtail.models.heads", "longtail.heads")
SAMPLERS = Registry("sampler", "data.sampler", "longtail.data.samplers", "longtail.samplers")
PRESETS = Registry("augmentation preset", "data.augment", "longtail.data.views", "longtail.presets")

_PLUGINS: dict[str, Any] = {}


def load_plugins(specs: Iterable[str]) -> list[str]:
    """Import plugin modules (each a dotted module name, or a path to a ``.py`` file) so that the entries
    they register are available; each is imported once per process. Returns their canonical names (the
    module name, or the absolute file path), which is what a run's config records."""
    done = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            continue
        is_file = spec.endswith(".py") or "/" in spec or "\\" in spec
        key = str(Path(spec).expanduser().resolve()) if is_file else spec
        if key not in _PLUGINS:
            _PLUGINS[key] = _import_file(Path(key)) if is_file else _import_module(spec)
        done.append(key)
    return done


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"plugin '{name}' cannot be imported ({e}); put its folder on PYTHONPATH, install it, "
                          f"or give the path of its .py file") from None


def _import_file(path: Path):
    if not path.is_file():
        raise ConfigError(f"plugin file {path} does not exist; give the path of a .py file or a module name")
    name = f"longtail_plugin_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module
