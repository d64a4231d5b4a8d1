"""Typed experiment configuration.

A config is a tree of dataclasses, one per section (:mod:`longtail.config.schema`), each key with a
default and one line of help; the ``method`` section is the selected method's own dataclass. YAML files
are read by a strict safe loader (a key given twice is an error) and may give any subset of keys, but
not none; a file may inherit from others with ``base:`` (:mod:`longtail.config.inherit`). Dotted
overrides (``optim.lr=0.05``) are parsed as YAML scalars and converted by the field's declared type,
never evaluated (:mod:`longtail.config.loading`); numbers must be finite. Unknown keys are errors that
name the nearest valid key; values are checked by :func:`validate`. :func:`show` prints the resolved
config with every key's value, default and help. This package imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from longtail.config.loading import (all_keys, apply_overrides, dump, flatten, from_dict, load_dataclass,
                                     set_key, to_dict)
from longtail.config.schema import (COMPILE_MODES, Config, DataConfig, EvalConfig, MethodConfig, ModelConfig,
                                    NEUTRAL_KEYS, OptimConfig, TrainConfig, key, run_name)
from longtail.config.listing import format_config, key_help, show
from longtail.config.validation import validate
from longtail.errors import ConfigError

__all__ = ["Config", "DataConfig", "ModelConfig", "MethodConfig", "OptimConfig", "TrainConfig", "EvalConfig",
           "COMPILE_MODES", "load", "load_dataclass", "from_dict", "apply_overrides", "set_key", "validate",
           "to_dict", "flatten", "dump", "all_keys", "run_name", "NEUTRAL_KEYS", "ConfigError", "show", "format_config", "key_help", "key"]


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config file, apply overrides and validate."""
    return validate(load_dataclass(Config, path, overrides))


def __getattr__(name: str):
    # the valid augmentation presets are the registry's (built-ins and plugins); not a list kept here
    if name == "AUGMENTS":
        from longtail.registry import PRESETS

        return tuple(PRESETS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
