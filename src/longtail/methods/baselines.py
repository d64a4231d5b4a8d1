"""The baselines of METHODS.md §1: CE, focal, class-balanced, LDAM-DRW and logit-adjusted CE."""

from __future__ import annotations

import numpy as np
import torch

from longtail.errors import ConfigError
from longtail.losses import (
    ClassBalancedLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
)
from longtail.methods.base import Method, register_method


@register_method("ce")
class CE(Method):
    """Cross-entropy with instance-balanced sampling."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        self.criterion = CrossEntropyLoss()


@register_method("focal")
class Focal(Method):
    """Focal loss, -(1 - p_y)^gamma log p_y (gamma = 1 in the LDAM CIFAR baseline)."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        self.criterion = FocalLoss(gamma=cfg.method.focal_gamma, parity=cfg.method.focal_parity)


@register_method("cb")
class ClassBalanced(Method):
    """Class-balanced loss with effective-number weights (1 - beta) / (1 - beta^n_c), summing to C."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        m = cfg.method
        self.criterion = ClassBalancedLoss(train_counts, beta=m.cb_beta, loss=m.cb_loss, gamma=m.focal_gamma,
                                           parity=m.focal_parity)


@register_method("ldam_drw")
class LDAMDRW(Method):
    """LDAM margins on the cosine head, with deferred re-weighting from ``method.drw_epoch``.

    Epochs ``< drw_epoch`` are unweighted; from ``drw_epoch`` (0-based) on, the class-balanced weights
    with ``beta = method.drw_beta`` apply. The switch depends only on the epoch index, so resuming in
    the middle of training restores it.
    """

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        if cfg.model.head != "cosine":
            raise ConfigError("method ldam_drw needs the cosine head: set model.head=cosine")
        m = cfg.method
        self.criterion = LDAMLoss(train_counts, max_margin=m.ldam_max_margin, scale=cfg.model.scale)
        self.register_buffer("drw_weights", class_balanced_weights(train_counts, m.drw_beta), persistent=False)
        self.drw_on = False

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        self.drw_on = epoch >= self.cfg.method.drw_epoch
        self.criterion.set_weight(self.drw_weights if self.drw_on else None)


@register_method("la")
class LogitAdjusted(Method):
    """Logit-adjusted CE, CE(s + tau log pi, y); at tau = 1 it is Balanced Softmax. Inference uses raw s."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        self.criterion = LogitAdjustedLoss(train_counts, tau=cfg.method.la_tau)
