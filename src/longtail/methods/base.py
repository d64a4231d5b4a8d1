"""What a method is: the views it needs, how it builds its network, and its loss.

Adding a method = one file with a :class:`Method` subclass decorated by ``@register_method("name")``,
plus configs. The trainer knows nothing about particular methods.
"""

from __future__ import annotations

import difflib
from typing import Callable

import numpy as np
import torch
from torch import nn

from longtail.config import Config
from longtail.data.batches import Batch
from longtail.errors import ConfigError
from longtail.models import NetOutput, Network, build_network

_REGISTRY: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def create_method(cfg: Config, train_counts: np.ndarray) -> "Method":
    name = cfg.method.name
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint} Available: {', '.join(list_methods())}")
    return _REGISTRY[name](cfg, np.asarray(train_counts, dtype=np.int64))


class Method(nn.Module):
    """Base recipe: one classification view, plain logits at inference.

    Subclasses set ``self.criterion`` (an ``nn.Module`` loss of ``(logits, targets)``) and may override
    :meth:`on_epoch_start` for epoch-dependent schedules (e.g. DRW). The method is an ``nn.Module`` so
    that its loss buffers (class counts, priors, weights) move with ``.to(device)``.
    """

    name = "base"
    num_views = 1

    def __init__(self, cfg: Config, train_counts: np.ndarray):
        super().__init__()
        if (train_counts <= 0).any():
            empty = np.flatnonzero(train_counts <= 0)[:5].tolist()
            raise ConfigError(f"classes {empty} have no training images; every class needs at least one")
        self.cfg = cfg
        self.register_buffer("train_counts", torch.as_tensor(train_counts, dtype=torch.int64), persistent=False)
        self.criterion: nn.Module = nn.CrossEntropyLoss()

    def build_network(self, num_classes: int, in_channels: int) -> Network:
        return build_network(self.cfg.model, num_classes, in_channels)

    def view_presets(self) -> list[str]:
        """Augmentation preset of each view the batch source must produce (baselines: one view)."""
        return [self.cfg.data.augment] * self.num_views

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        """Called before each 0-based epoch and on resume, so schedules depend only on the epoch.

        ``fresh`` is False when a run resumes in the middle of ``epoch``: per-epoch state (e.g. BBL's
        epoch memory) was already rolled over before the checkpoint and must not roll again.
        """

    def forward_batch(self, network: Callable, batch: Batch) -> NetOutput:
        """Run the network on the views this method needs (baselines: the first view only)."""
        return network(batch.views[0])

    def loss(self, batch: Batch, output: NetOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss for one batch, plus named parts for logging (detached scalars)."""
        loss = self.criterion(output.logits, batch.labels)
        return loss, {}

    def inference_logits(self, output: NetOutput) -> torch.Tensor:
        """Logits used for prediction. Training-time adjustments never appear here."""
        return output.logits
