"""Class-balanced loss (Cui et al., CVPR 2019): effective-number weights (1 - beta) / (1 - beta^n_c)."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import ClassBalancedLoss
from longtail.methods.base import Method, param, register_method
from longtail.methods.focal import FocalConfig


@dataclass
class CBConfig(FocalConfig):
    cb_beta: float = param(0.9999, at_least=0, below=1, help="beta of the effective number (1 - beta^n) / (1 - beta)")
    cb_loss: str = param("ce", choices=("ce", "focal"), help="ce, or focal (then focal_gamma and focal_parity apply)")

    def uses_focal(self) -> bool:
        return self.cb_loss == "focal"


@register_method("cb", params=CBConfig)
class ClassBalanced(Method):
    """Class-balanced loss with effective-number weights summing to C."""

    def make_criterion(self):
        p = self.params
        return ClassBalancedLoss(self.counts, beta=p.cb_beta, loss=p.cb_loss, gamma=p.focal_gamma,
                                 parity=p.focal_parity, label_smoothing=p.label_smoothing)
