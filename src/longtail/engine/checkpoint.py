"""Checkpoints: written atomically, read with ``weights_only=True``, checked against the model.

A checkpoint holds only tensors and plain containers (the config as a dict, RNG states as uint8
tensors), so it loads without unpickling arbitrary objects.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longtail.errors import CheckpointError
from longtail.fileio import atomic_write

REQUIRED = ("version", "model", "optimizer", "epoch", "step_in_epoch", "global_step", "config", "rng")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through :func:`~longtail.fileio.atomic_write`: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely; a missing, truncated or corrupted file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (was the run started with this folder?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({reason}). It was left as it is; restore a good copy "
            f"or start the run again without --resume."
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a longtail training checkpoint (missing {', '.join(missing)})")
    return state


def check_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a CheckpointError naming the first parameter whose shape differs from the checkpoint's."""
    own = model.state_dict()
    extra = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    for k in own:
        if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape):
            raise CheckpointError(
                f"cannot resume from {path}: '{k}' has shape {tuple(state_dict[k].shape)} in the checkpoint but "
                f"{tuple(own[k].shape)} under the current config. The config changes the model's shapes (dataset, "
                f"number of classes, backbone, head or width); resume with the run's own config.yaml, or start a "
                f"new run."
            )
    if extra or missing:
        names = ", ".join((missing or extra)[:3])
        raise CheckpointError(
            f"cannot resume from {path}: the model under the current config has different parameters ({names}). "
            f"Resume with the run's own config.yaml, or start a new run."
        )
