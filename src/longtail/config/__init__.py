"""Typed experiment configuration.

A config is a tree of dataclasses, one per section (:mod:`longtail.config.schema`); the ``method``
section is the selected method's own dataclass. YAML files are read with ``yaml.safe_load`` and may give
any subset of keys; dotted overrides (``optim.lr=0.05``) are parsed as YAML scalars and converted by the
field's declared type, never evaluated (:mod:`longtail.config.loading`). Unknown keys are errors that
name the nearest valid key; values are checked by :func:`validate`. This package imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from longtail.config.loading import (all_keys, apply_overrides, dump, from_dict, load_dataclass, set_key,
                                     to_dict)
from longtail.config.schema import (COMPILE_MODES, Config, DataConfig, EvalConfig, MethodConfig, ModelConfig,
                                    OptimConfig, TrainConfig, run_name)
from longtail.config.validation import validate
from longtail.errors import ConfigError

__all__ = ["Config", "DataConfig", "ModelConfig", "MethodConfig", "OptimConfig", "TrainConfig", "EvalConfig",
           "COMPILE_MODES", "load", "load_dataclass", "from_dict", "apply_overrides", "set_key", "validate",
           "to_dict", "dump", "all_keys", "run_name", "ConfigError"]


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config file, apply overrides and validate."""
    return validate(load_dataclass(Config, path, overrides))


def __getattr__(name: str):
    # the valid augmentation presets are the registry's (built-ins and plugins); not a list kept here
    if name == "AUGMENTS":
        from longtail.registry import PRESETS

        return tuple(PRESETS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
