"""What a method is: its parameters, the views it needs, how it builds its network, and its loss.

Adding a method is one file: a parameter dataclass (a subclass of :class:`MethodConfig` listing the
method's own config keys, each declared with :func:`param`: default, help and constraints) and a
:class:`Method` subclass decorated with ``@register_method("name")`` whose ``Params`` is that dataclass;
plus configs. The trainer knows nothing about particular methods. A method in your own module is
registered the same way and made known with ``plugins: [your_module]`` in the config.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import numpy as np
import torch
from torch import nn

from longtail.config import Config, MethodConfig, ModelConfig
from longtail.config.schema import param
from longtail.data.batches import Batch
from longtail.errors import ConfigError
from longtail.mixing import MixedLabels, mixed_criterion, mixing_refusal
from longtail.models import NetOutput, Network, build_network
from longtail.registry import METHODS

__all__ = ["Method", "MethodConfig", "param", "register_method", "create_method", "list_methods", "check_value",
           "label_smoothing_param"]


def register_method(name: str, params: type = None) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: register a :class:`Method` subclass as ``method.name = name``, with ``params`` (a
    :class:`MethodConfig` subclass) as its parameters (default: the class's ``Params``)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        if params is not None:
            cls.Params = params
        METHODS.register(name, cls)
        return cls

    return deco


def list_methods() -> list[str]:
    """Names of the registered methods (built-ins and loaded plugins), sorted."""
    return sorted(METHODS.names())


def create_method(cfg: Config, train_counts: np.ndarray) -> "Method":
    """The method of ``cfg.method`` for a training split with ``train_counts`` images per class."""
    cls = METHODS.get(cfg.method.name)
    extra = {"seed": int(cfg.train.seed)} if getattr(cls, "takes_seed", False) else {}  # e.g. ProCo's init draws
    return cls(cfg.method, model=cfg.model, augment=cfg.data.augment,
               train_counts=np.asarray(train_counts, dtype=np.int64), **extra)


def label_smoothing_param() -> float:
    """The ``label_smoothing`` parameter of the cross-entropy family (ce, la, cb, ldam_drw; focal refuses it)."""
    return param(0.0, at_least=0, below=1, help="label smoothing epsilon of the cross-entropy (torch's definition: "
                                                "target 1 - eps on the label plus eps / C on every class); 0 = off")


def check_value(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError ``method.<key> <msg>`` unless ``ok`` (for the parameter dataclasses' ``check``)."""
    if not ok:
        raise ConfigError(f"method.{key} {msg}")


class Method(nn.Module):
    """Base recipe: one classification view, plain logits at inference.

    Subclasses return their classification loss from :meth:`make_criterion` (an ``nn.Module`` of
    ``(logits, targets)``) and may override :meth:`on_epoch_start` for epoch-dependent schedules (e.g. DRW). The method is an ``nn.Module`` so
    that its loss buffers (class counts, priors, weights) move with ``.to(device)``.

    Args:
        params: the method's parameters (its ``Params`` dataclass: the config's ``method`` section).
        model: the ``model`` section (the network the method builds).
        augment: the ``data.augment`` preset, the view of the classifier.
        train_counts: training images per class (each > 0).
    """

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = MethodConfig
    num_views: ClassVar[int] = 1
    #: the loss is a (weighted) mean of per-sample terms, so ``train.accumulate`` can split a batch into
    #: micro-batches without changing the update; False for losses that compare the samples of a batch
    accumulates: ClassVar[bool] = True
    #: True: :func:`create_method` passes the run seed (``train.seed``) as the keyword ``seed``
    takes_seed: ClassVar[bool] = False

    def __init__(self, params: MethodConfig, *, model: ModelConfig, augment: str, train_counts: np.ndarray):
        super().__init__()
        train_counts = np.asarray(train_counts, dtype=np.int64)
        if (train_counts <= 0).any():
            empty = np.flatnonzero(train_counts <= 0)[:5].tolist()
            raise ConfigError(f"classes {empty} have no training images; every class needs at least one")
        self.params, self.model_cfg, self.augment, self.counts = params, model, augment, train_counts
        self.register_buffer("train_counts", torch.as_tensor(train_counts, dtype=torch.int64), persistent=False)
        self.criterion: nn.Module = self.make_criterion()

    def make_criterion(self) -> nn.Module:
        """The classification loss ``criterion(logits, targets)`` (built once; ``self.params``,
        ``self.model_cfg`` and the class counts ``self.counts`` are set)."""
        return nn.CrossEntropyLoss()

    @classmethod
    def presets(cls, params: MethodConfig, augment: str) -> list[str]:
        """Augmentation preset of each view the batch source must produce (baselines: one view)."""
        return [augment] * cls.num_views

    def view_presets(self) -> list[str]:
        return type(self).presets(self.params, self.augment)

    def build_network(self, num_classes: int, in_channels: int) -> Network:
        return build_network(self.model_cfg, num_classes, in_channels)

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        """Called before each 0-based epoch and on resume, so schedules depend only on the epoch.

        ``fresh`` is False when a run resumes in the middle of ``epoch``: per-epoch state (e.g. BBL's
        epoch memory) was already rolled over before the checkpoint and must not roll again.
        """

    def forward_batch(self, network: Callable, batch: Batch) -> NetOutput:
        """Run the network on the views this method needs: ``network_output(network(network_input(batch)))``.

        A method that overrides the two hooks instead of this method can be trained as one of the stacked
        networks of ``train.seeds`` (which runs the network itself on N models' inputs at once).
        """
        return self.network_output(network(self.network_input(batch)), batch)

    def network_input(self, batch: Batch) -> torch.Tensor:
        """The one tensor the network runs on for ``batch`` (baselines: the first view)."""
        return batch.views[0]

    def network_output(self, output: NetOutput, batch: Batch) -> NetOutput:
        """What the loss sees of the network's output on :meth:`network_input` (baselines: all of it)."""
        return output

    def loss(self, batch: Batch, output: NetOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss for one batch, plus named parts for logging (detached scalars)."""
        loss = self.criterion(output.logits, batch.labels)
        return loss, {}

    def loss_sample_weights(self, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Each sample's weight in the loss's weighted mean Σ_i w_i l_i / Σ_i w_i (float32 [B] on the
        labels' device), or None when the loss is a plain mean over the batch. Gradient accumulation
        (``train.accumulate``) weighs each micro-batch's loss by its share of Σ_i w_i."""
        weights = getattr(self.criterion, "sample_weights", None)
        return weights(labels) if weights is not None else None

    def mixed_loss(self, batch: Batch, output: NetOutput, mix: MixedLabels) -> tuple[torch.Tensor, dict]:
        """Training loss for a mixed batch (``train.mix``): ``batch.labels`` are y_a, ``mix`` holds y_b and
        the label weight λ (:func:`longtail.mixing.mixed_criterion`). Methods that override :meth:`loss`
        override this too, or they cannot be mixed."""
        return mixed_criterion(self.criterion, output.logits, batch.labels, mix), {}

    @classmethod
    def mixing_refusal(cls) -> Optional[str]:
        """Why this method cannot train with batch mixing, or None (:func:`longtail.mixing.mixing_refusal`)."""
        return mixing_refusal(cls)

    def inference_logits(self, output: NetOutput) -> torch.Tensor:
        """Logits used for prediction. Training-time adjustments never appear here."""
        return output.logits

