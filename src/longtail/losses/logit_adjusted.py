"""Logit adjustment (Menon et al., arXiv 2007.07314) and Balanced Softmax (Ren et al., arXiv 2007.10740).

Training adds the (scaled) log prior to the logits inside the loss only; the network's logits never
contain it, so inference uses the raw argmax. Post-hoc adjustment is the evaluation-time alternative
for a CE-trained model. Never use both (docs/methods.md §1 pitfall 4).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.losses._common import CountsLike, as_counts, check_smoothing, prepare, reduce_terms


def _check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0 (got {tau!r}); 1 is the standard value")
    return float(tau)


def log_prior(counts: CountsLike) -> Tensor:
    """log π_c = log(n_c / N) as float32. Shape: counts [C] (each > 0) -> [C]."""
    n = as_counts(counts)
    return (n / n.sum()).log().to(torch.float32)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted CE: CE(s + τ·log π, y), batch mean.

    Buffer ``log_prior`` [C] float32 (log π_c = log n_c/N). Counts must all be > 0. ``label_smoothing``
    ε > 0 smooths the target as ``torch.nn.functional.cross_entropy`` does, on the *adjusted* logits
    z = s + τ·log π: −(1 − ε) log softmax(z)_y − (ε / C) Σ_c log softmax(z)_c.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, counts: CountsLike, tau: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.register_buffer("log_prior", log_prior(counts), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        """``sample_weight`` c [B] multiplies each sample's term, the mean over B unchanged (batch mixing)."""
        logits, targets = prepare(logits, targets, num_classes=self.log_prior.shape[0])
        adjusted = logits + self.tau * self.log_prior.to(logits.device, torch.float32)
        if sample_weight is not None:
            terms = F.cross_entropy(adjusted, targets, label_smoothing=self.label_smoothing, reduction="none")
            return reduce_terms(terms, targets, None, sample_weight)
        if self.label_smoothing:
            return F.cross_entropy(adjusted, targets, label_smoothing=self.label_smoothing)
        return F.cross_entropy(adjusted, targets)

    def extra_repr(self) -> str:
        return f"tau={self.tau}" + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax: CE(s + log n, y), batch mean.

    Equal to :class:`LogitAdjustedLoss` with τ = 1, because adding log N to every logit leaves CE
    unchanged. Buffer ``log_counts`` [C] float32. Counts must all be > 0.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, counts: CountsLike) -> None:
        super().__init__()
        self.register_buffer("log_counts", as_counts(counts).log().to(torch.float32), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        """``sample_weight`` c [B] multiplies each sample's term, the mean over B unchanged (batch mixing)."""
        logits, targets = prepare(logits, targets, num_classes=self.log_counts.shape[0])
        adjusted = logits + self.log_counts.to(logits.device, torch.float32)
        if sample_weight is not None:
            return reduce_terms(F.cross_entropy(adjusted, targets, reduction="none"), targets, None, sample_weight)
        return F.cross_entropy(adjusted, targets)


def posthoc_adjust(logits: Tensor, counts: CountsLike, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment for evaluation: s − τ·log π; predict with its argmax.

    Tune τ on a validation split only. τ = 0 returns the logits unchanged (as float32).

    Shape:
        logits [B, C] -> float32 [B, C] on the logits' device.
    """
    tau = _check_tau(tau)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C] (got shape {tuple(logits.shape)})")
    lp = log_prior(counts)
    if lp.shape[0] != logits.shape[1]:
        raise ValueError(f"counts have {lp.shape[0]} classes but logits have {logits.shape[1]}")
    logits = logits.float()
    if tau == 0:
        return logits
    return logits - tau * lp.to(logits.device)
