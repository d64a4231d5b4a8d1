"""Logit adjustment (Menon et al., ICLR 2021): CE(s + tau log pi, y); at tau = 1 it is Balanced Softmax
(Ren et al., NeurIPS 2020). Inference uses the raw logits s."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import LogitAdjustedLoss
from longtail.methods.base import Method, MethodConfig, label_smoothing_param, param, register_method


@dataclass
class LAConfig(MethodConfig):
    la_tau: float = param(1.0, at_least=0, help="tau of the adjustment tau * log(prior); 1 is Balanced Softmax")
    label_smoothing: float = label_smoothing_param()


@register_method("la", params=LAConfig)
class LogitAdjusted(Method):
    """Logit-adjusted CE with instance-balanced sampling; label smoothing applies to the adjusted logits."""

    def make_criterion(self):
        return LogitAdjustedLoss(self.counts, tau=self.params.la_tau, label_smoothing=self.params.label_smoothing)
