"""Logit adjustment (Menon et al., ICLR 2021): CE(s + tau log pi, y); at tau = 1 it is Balanced Softmax
(Ren et al., NeurIPS 2020). Inference uses the raw logits s."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import LogitAdjustedLoss
from longtail.methods.base import Method, MethodConfig, check_value, register_method


@dataclass
class LAConfig(MethodConfig):
    la_tau: float = 1.0

    def check(self) -> None:
        check_value(self.la_tau >= 0, "la_tau", f"must be >= 0 (got {self.la_tau})")


@register_method("la")
class LogitAdjusted(Method):
    """Logit-adjusted CE with instance-balanced sampling."""

    Params = LAConfig

    def __init__(self, params: LAConfig, *, train_counts, **kw):
        super().__init__(params, train_counts=train_counts, **kw)
        self.criterion = LogitAdjustedLoss(train_counts, tau=params.la_tau)
