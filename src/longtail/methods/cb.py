"""Class-balanced loss (Cui et al., CVPR 2019): effective-number weights (1 - beta) / (1 - beta^n_c)."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import ClassBalancedLoss
from longtail.methods.base import Method, check_value, register_method
from longtail.methods.focal import FocalConfig


@dataclass
class CBConfig(FocalConfig):
    cb_beta: float = 0.9999
    cb_loss: str = "ce"  # ce | focal (then focal_gamma and focal_parity apply)

    def check(self) -> None:
        super().check()
        check_value(0 <= self.cb_beta < 1, "cb_beta", f"must be in [0, 1) (got {self.cb_beta})")
        check_value(self.cb_loss in ("ce", "focal"), "cb_loss", f"must be one of ce, focal (got '{self.cb_loss}')")


@register_method("cb")
class ClassBalanced(Method):
    """Class-balanced loss with effective-number weights summing to C."""

    Params = CBConfig

    def __init__(self, params: CBConfig, *, train_counts, **kw):
        super().__init__(params, train_counts=train_counts, **kw)
        self.criterion = ClassBalancedLoss(train_counts, beta=params.cb_beta, loss=params.cb_loss,
                                           gamma=params.focal_gamma, parity=params.focal_parity)
