"""Class-balanced loss (Cui et al., CVPR 2019): effective-number weights (1 - beta) / (1 - beta^n_c)."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import ClassBalancedLoss
from longtail.methods.base import Method, check_value, param, register_method
from longtail.methods.focal import FocalConfig


@dataclass
class CBConfig(FocalConfig):
    cb_beta: float = param(0.9999, at_least=0, below=1, help="beta of the effective number (1 - beta^n) / (1 - beta)")
    cb_loss: str = param("ce", choices=("ce", "focal", "sigmoid_focal"),
                         help="ce; focal (softmax; focal_gamma, focal_parity apply); sigmoid_focal (the paper's; "
                              "focal_gamma applies)")
    cb_reduction: str = param("batch", choices=("batch", "normalized"),
                              help="batch: sum w*loss / B (the paper's code); normalized: sum w*loss / sum w, "
                                   "PyTorch's weighted CE / LDAM-DRW's re-weighting")

    def check(self) -> None:
        super().check()
        ldam = self.focal_parity == "ldam"
        check_value(not (ldam and self.cb_loss == "sigmoid_focal"), "focal_parity",
                    "ldam applies to the softmax focal loss only (cb_loss=focal), not to cb_loss=sigmoid_focal")
        check_value(not (ldam and self.cb_loss == "focal" and self.cb_reduction != "batch"), "focal_parity",
                    "ldam has LDAM-DRW's own batch mean: use it with cb_reduction=batch")

    def uses_focal(self) -> bool:
        return self.cb_loss in ("focal", "sigmoid_focal")


@register_method("cb", params=CBConfig)
class ClassBalanced(Method):
    """Class-balanced loss with effective-number weights summing to C."""

    def make_criterion(self):
        p = self.params
        p.check()
        return ClassBalancedLoss(self.counts, beta=p.cb_beta, loss=p.cb_loss, gamma=p.focal_gamma,
                                 parity=p.focal_parity, reduction=p.cb_reduction, label_smoothing=p.label_smoothing)
