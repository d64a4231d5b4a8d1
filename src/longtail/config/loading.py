"""Reading configs: YAML files and dotted overrides, converted by the fields' declared types.

YAML is read by a strict safe loader (:mod:`longtail.config.yamlio`: a key given twice is an error); a
file may inherit from ``base:`` files (:mod:`longtail.config.inherit`); an empty file is an error. An
override ``optim.lr=0.05`` is parsed as a YAML scalar and converted by the field's type, never
evaluated. Numbers must be finite (no NaN or infinity, however written). Unknown keys are errors naming
the nearest valid key. The ``method`` section is typed by the selected method: its keys are the
parameters that method declares (``plugins`` are imported first, so a plugin's method is known by then).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from longtail.config.inherit import BASE_KEY, read_config_file
from longtail.config.schema import Config, MethodConfig
from longtail.config.yamlio import parse_override
from longtail.errors import ConfigError

# ----------------------------------------------------------------------------------------------------
# key handling


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: Any = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key of a config class, or of a config instance (whose ``method`` section then
    lists the selected method's parameters), e.g. ``optim.lr``."""
    obj = None if isinstance(cls, type) else cls
    out = []
    for name, tp in _field_types(type(obj) if obj is not None else cls).items():
        key = prefix + name
        if obj is not None and dataclasses.is_dataclass(getattr(obj, name, None)):
            out.extend(all_keys(getattr(obj, name), key + "."))
        elif _is_dataclass_type(tp):
            out.extend(all_keys(tp, key + "."))
        else:
            out.append(key)
    return out


#: common names from other codebases -> our key's last component
_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
            "epoch": "epochs", "imb_factor": "imbalance", "imbalance_ratio": "imbalance", "arch": "backbone",
            "loss": "name", "scheduler": "schedule", "lr_schedule": "schedule", "dataset": "name"}


def _unknown_key(key: str, root: Any = Config) -> ConfigError:
    keys = all_keys(root)
    section, _, leaf = key.rpartition(".")
    same = [k for k in keys if k.rpartition(".")[0] == section]
    close: list[str] = []
    if same:  # the section exists: look for the leaf among its keys, aliases first
        leaves = {k.rpartition(".")[2]: k for k in same}
        if _ALIASES.get(leaf) in leaves:
            close = [leaves[_ALIASES[leaf]]]
        else:
            m = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
            close = [leaves[m[0]]] if m else []
    if not close:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        by_leaf = {k.rpartition(".")[2]: k for k in keys}
        m = difflib.get_close_matches(_ALIASES.get(leaf, leaf), list(by_leaf), n=1, cutoff=0.7)
        close = [by_leaf[m[0]]] if m else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _number(key: str, value: Any, tp: type) -> Any:
    """An int or float from a YAML number or a numeric string; bools, fractional ints and non-finite
    numbers (``.nan``, ``.inf``, ``"nan"``, ``"1e999"``, ...) are refused."""
    what = "an integer" if tp is int else "a number"
    if isinstance(value, str):
        for conv in (tp, float):  # float too: "nan" or "1e999" for an int key is refused as non-finite
            try:
                value = conv(value.strip())
                break
            except ValueError:
                pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be {what} (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number (got {value}); NaN and infinity are not allowed")
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{key} must be {what} (got {value!r})")
    try:
        return tp(value)
    except OverflowError:  # an integer beyond the float range
        raise ConfigError(f"{key} must be a finite number (got an integer of {len(str(value))} digits)") from None


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value to the declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _convert(key, value, args[0])
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_convert(key, v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if tp in (int, float):
        return _number(key, value, tp)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string (got {value!r})")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - internal


# ----------------------------------------------------------------------------------------------------
# the method section: typed by the selected method


def _method_class(name: str) -> type:
    from longtail.registry import METHODS

    return getattr(METHODS.get(name), "Params", MethodConfig)


def _explicit(obj: Any) -> set:
    """Keys of a method section that were set by a file or an override (not left at their default)."""
    s = getattr(obj, "_explicit", None)
    if s is None:
        s = set()
        object.__setattr__(obj, "_explicit", s)
    return s


def _not_a_parameter(key: str, name: str, cls: type) -> ConfigError:
    from longtail.registry import METHODS

    leaf = key.rpartition(".")[2]
    owners = [n for n, m in METHODS.items()
              if leaf in {f.name for f in dataclasses.fields(getattr(m, "Params", MethodConfig))}]
    params = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    close = difflib.get_close_matches(leaf, params, n=1, cutoff=0.6)
    hint = f"; did you mean 'method.{close[0]}'?" if close else ""
    owned = f" It is a parameter of {', '.join(owners)}: set method.name to one of them or remove it." if owners \
        else ""
    return ConfigError(f"'{key}' is not a parameter of method '{name}'{hint} (the parameters of {name}: "
                       f"{', '.join(params) if params else 'none'}).{owned}")


def _legacy_default(key: str, value: Any) -> bool:
    """True for a key of the old flat method section still at its old default (runs written before the
    method sections were typed list every method's parameters); such keys are ignored when read."""
    from longtail.config.legacy import LEGACY_METHOD_DEFAULTS

    return key in LEGACY_METHOD_DEFAULTS and value == LEGACY_METHOD_DEFAULTS[key]


def _apply_method(cfg: Config, data: Any, name: Optional[str] = None) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section 'method' must be a mapping (got {data!r})")
    name = name or str(data.get("name", cfg.method.name))
    cls = _method_class(name)
    if type(cfg.method) is not cls or cfg.method.name != name:
        _switch_method(cfg, name, cls)
    types_ = _field_types(cls)
    for k, v in data.items():
        if k == "name":
            continue
        if k not in types_:
            if _legacy_default(str(k), v):
                continue
            raise _not_a_parameter(f"method.{k}", name, cls)
        setattr(cfg.method, k, _convert(f"method.{k}", v, types_[k]))
        _explicit(cfg.method).add(k)


def _switch_method(cfg: Config, name: str, cls: type) -> None:
    """Select method ``name``: its defaults, plus the parameters set so far that it shares."""
    old = cfg.method
    new = cls(name=name)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in sorted(_explicit(old)):
        if k not in names:
            raise ConfigError(f"method.{k} is set for method '{old.name}' but method '{name}' has no such "
                              f"parameter; remove it or keep method.name={old.name}")
        setattr(new, k, getattr(old, k))
        _explicit(new).add(k)
    cfg.method = new


# ----------------------------------------------------------------------------------------------------
# applying dicts and overrides


def _apply_dict(obj: Any, data: dict, prefix: str = "", root: Any = Config) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix.rstrip('.') or '<top>'}' must be a mapping (got {data!r})")
    types_ = _field_types(type(obj))
    if isinstance(obj, Config) and "plugins" in data:  # first: they may register the method in use
        obj.plugins = _convert("plugins", data["plugins"], types_["plugins"]) + list(obj.plugins)
        _load_plugins(obj)
    for k, v in data.items():
        key = prefix + str(k)
        if key == BASE_KEY and k not in types_:
            raise _base_outside_files()
        if k not in types_:
            raise _unknown_key(key, root)
        if isinstance(obj, Config) and k == "method":
            _apply_method(obj, v if v is not None else {})
            continue
        tp = types_[k]
        if _is_dataclass_type(tp):
            _apply_dict(getattr(obj, k), v if v is not None else {}, key + ".", root)
        elif not (isinstance(obj, Config) and k == "plugins"):
            setattr(obj, k, _convert(key, v, tp))


def _load_plugins(cfg: Config) -> None:
    from longtail.registry import load_plugins

    cfg.plugins = list(dict.fromkeys(load_plugins(cfg.plugins)))  # canonical names, each once


def set_key(cfg: Any, key: str, raw: str) -> None:
    """Apply one dotted override to a config dataclass, ``raw`` being the text after ``=``."""
    parts = key.split(".")
    if key == BASE_KEY and BASE_KEY not in _field_types(type(cfg)):
        raise _base_outside_files()
    if isinstance(cfg, Config) and parts[0] == "method" and len(parts) == 2:
        value = raw if parts[1] == "name" else parse_override(raw, key)
        _apply_method(cfg, {parts[1]: value}, name=raw.strip() if parts[1] == "name" else None)
        return
    obj: Any = cfg
    for i, p in enumerate(parts):
        types_ = _field_types(type(obj))
        if p not in types_:
            raise _unknown_key(key, cfg)
        tp = types_[p]
        if i == len(parts) - 1:
            if _is_dataclass_type(tp):
                raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. '{all_keys(tp, key + '.')[0]}=...'")
            value = raw if tp is str or typing.get_args(tp) == (str, type(None)) else parse_override(raw, key)
            if isinstance(obj, Config) and p == "plugins":  # an override adds plugins to the config's own
                obj.plugins = list(obj.plugins) + _convert(key, value, tp)
                _load_plugins(obj)
                return
            setattr(obj, p, _convert(key, value, tp))
            return
        if not _is_dataclass_type(tp):
            raise _unknown_key(key, cfg)
        obj = getattr(obj, p)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``KEY=VALUE`` overrides in order (``plugins`` and ``method.name`` first, since the method's
    other keys depend on them)."""
    pairs = []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like KEY=VALUE, e.g. optim.lr=0.05")
        key, raw = ov.split("=", 1)
        pairs.append((key.strip(), raw.strip()))
    first = ("plugins", "method.name")
    for key, raw in sorted(pairs, key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first)):
        set_key(cfg, key, raw)
    return cfg


# ----------------------------------------------------------------------------------------------------
# files


def _base_outside_files() -> ConfigError:
    return ConfigError("'base' (files to inherit from) can only be given in a YAML config file, not in an "
                       "override or a dict")


EMPTY_CONFIG = ("a config needs at least one section (e.g. data: and method:) or a base: file to inherit "
                "from; an empty config would silently train every default (200 epochs of CIFAR-10-LT)")


def _read_yaml(path: Path, cls: type = Config) -> tuple[dict, list[Path]]:
    """The mapping of a config file with its ``base:`` files merged in, and the files read."""
    hint = EMPTY_CONFIG if cls is Config else f"give at least one {cls.__name__} key, or no file at all"
    return read_config_file(path, hint)


def load_dataclass(cls: type, path: Optional[str | Path] = None, overrides: Optional[list[str]] = None):
    """Load any config dataclass (e.g. a stage's own config) from YAML + dotted overrides, with the
    same typed conversion and nearest-key errors as :func:`load` (without its validation). The file may
    inherit from ``base:`` files; an empty file is an error. For a :class:`Config`, ``plugins=...``
    overrides are imported before the file is read (they may register the file's method)."""
    return load_with_files(cls, path, overrides)[0]


def load_with_files(cls: type, path: Optional[str | Path] = None,
                    overrides: Optional[list[str]] = None) -> tuple[Any, list[Path]]:
    """:func:`load_dataclass`, and the files it read (bases first, the file itself last)."""
    obj = cls()
    files: list[Path] = []
    overrides = list(overrides or [])
    if isinstance(obj, Config):
        for ov in overrides:
            if ov.split("=", 1)[0].strip() == "plugins" and "=" in ov:
                set_key(obj, "plugins", ov.split("=", 1)[1].strip())
        overrides = [ov for ov in overrides if ov.split("=", 1)[0].strip() != "plugins"]
    if path is not None:
        data, files = _read_yaml(Path(path), cls)
        if isinstance(obj, Config):  # method.name from the command line decides the file's method keys
            name = [ov.split("=", 1)[1].strip() for ov in overrides if ov.split("=", 1)[0].strip() == "method.name"]
            if name and isinstance(data.get("method"), dict):
                data = dict(data, method=dict(data["method"], name=name[-1]))
        _apply_dict(obj, data, root=obj)
    return apply_overrides(obj, overrides), files


def from_dict(data: dict) -> Config:
    """A config from a nested dict (as ``yaml.safe_load`` gives it), without validation."""
    cfg = Config()
    _apply_dict(cfg, data or {}, root=cfg)
    return cfg


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists and
    empty mappings stay values)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_dict(cfg: Config) -> dict:
    """The config as a nested dict of plain values."""
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The config as YAML, keys in declaration order: what a run's ``config.yaml`` holds."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
