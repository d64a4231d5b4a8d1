"""LDAM-DRW (Cao et al., NeurIPS 2019): label-distribution-aware margins on the cosine head, with
deferred re-weighting."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.errors import ConfigError
from longtail.losses import LDAMLoss, class_balanced_weights
from longtail.methods.base import Method, MethodConfig, label_smoothing_param, param, register_method


@dataclass
class LDAMDRWConfig(MethodConfig):
    ldam_max_margin: float = param(0.5, at_least=0, help="the largest margin (of the rarest class)")
    drw_epoch: int = param(160, at_least=0, help="0-based epoch at which DRW switches the class weights on")
    drw_beta: float = param(0.9999, at_least=0, below=1, help="beta of DRW's class-balanced weights")
    label_smoothing: float = label_smoothing_param()


@register_method("ldam_drw", params=LDAMDRWConfig)
class LDAMDRW(Method):
    """LDAM margins on the cosine head (scale ``model.scale``), with deferred re-weighting from
    ``method.drw_epoch``.

    Epochs ``< drw_epoch`` are unweighted; from ``drw_epoch`` (0-based) on, the class-balanced weights
    with ``beta = method.drw_beta`` apply. The switch depends only on the epoch index, so resuming in
    the middle of training restores it.
    """

    def __init__(self, params: LDAMDRWConfig, *, model, train_counts, **kw):
        if model.head != "cosine":
            raise ConfigError("method ldam_drw needs the cosine head: set model.head=cosine")
        super().__init__(params, model=model, train_counts=train_counts, **kw)
        self.register_buffer("drw_weights", class_balanced_weights(train_counts, params.drw_beta), persistent=False)
        self.drw_on = False

    def make_criterion(self):
        return LDAMLoss(self.counts, max_margin=self.params.ldam_max_margin, scale=self.model_cfg.scale,
                        label_smoothing=self.params.label_smoothing)

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        self.drw_on = epoch >= self.params.drw_epoch
        self.criterion.set_weight(self.drw_weights if self.drw_on else None)
