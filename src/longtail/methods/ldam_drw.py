"""LDAM-DRW (Cao et al., NeurIPS 2019): label-distribution-aware margins on the cosine head, with
deferred re-weighting."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.errors import ConfigError
from longtail.losses import LDAMLoss, class_balanced_weights
from longtail.methods.base import Method, MethodConfig, check_value, register_method


@dataclass
class LDAMDRWConfig(MethodConfig):
    ldam_max_margin: float = 0.5
    drw_epoch: int = 160  # 0-based epoch at which DRW switches on
    drw_beta: float = 0.9999

    def check(self) -> None:
        check_value(self.ldam_max_margin >= 0, "ldam_max_margin", f"must be >= 0 (got {self.ldam_max_margin})")
        check_value(self.drw_epoch >= 0, "drw_epoch", f"must be >= 0 (got {self.drw_epoch})")
        check_value(0 <= self.drw_beta < 1, "drw_beta", f"must be in [0, 1) (got {self.drw_beta})")


@register_method("ldam_drw")
class LDAMDRW(Method):
    """LDAM margins on the cosine head (scale ``model.scale``), with deferred re-weighting from
    ``method.drw_epoch``.

    Epochs ``< drw_epoch`` are unweighted; from ``drw_epoch`` (0-based) on, the class-balanced weights
    with ``beta = method.drw_beta`` apply. The switch depends only on the epoch index, so resuming in
    the middle of training restores it.
    """

    Params = LDAMDRWConfig

    def __init__(self, params: LDAMDRWConfig, *, model, train_counts, **kw):
        super().__init__(params, model=model, train_counts=train_counts, **kw)
        if model.head != "cosine":
            raise ConfigError("method ldam_drw needs the cosine head: set model.head=cosine")
        self.criterion = LDAMLoss(train_counts, max_margin=params.ldam_max_margin, scale=model.scale)
        self.register_buffer("drw_weights", class_balanced_weights(train_counts, params.drw_beta), persistent=False)
        self.drw_on = False

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        self.drw_on = epoch >= self.params.drw_epoch
        self.criterion.set_weight(self.drw_weights if self.drw_on else None)
