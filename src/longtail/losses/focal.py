"""Softmax focal loss (Lin et al., arXiv 1708.02002; docs/methods.md §1 and pitfall 2)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.losses._common import (ClassWeighted, CountsLike, check_gamma, prepare, reduce_terms, sample_weights,
                                     weight_on)

PARITIES = ("default", "ldam")

# Lower bound on 1 − p: keeps the gradient of (1 − p)^γ finite for 0 < γ < 1 when p rounds to 1.
_TINY = torch.finfo(torch.float32).tiny


def _modulate(one_minus_p: Tensor, gamma: float) -> Tensor:
    return one_minus_p.clamp_min(_TINY).pow(gamma)


def focal_terms(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Per-sample softmax focal loss FL_i = −(1 − p_{y_i})^γ log p_{y_i}, p = softmax(s) (unreduced).

    Shape:
        logits [B, C] float32, targets [B] int64 (both already checked) -> [B] float32.
    """
    logp_y = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return -_modulate(-torch.expm1(logp_y), gamma) * logp_y  # 1 − p via expm1: accurate near p = 1


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 1.0, weight: Optional[Tensor] = None,
               parity: str = "default", sample_weight: Optional[Tensor] = None) -> Tensor:
    """Softmax focal loss.

    ``parity="default"``: p = softmax(s) (unweighted), FL_i = −(1 − p_{y_i})^γ log p_{y_i},
    loss = Σ_i w_{y_i} FL_i / Σ_i w_{y_i} (plain mean without weights).

    ``parity="ldam"`` reproduces kaidic/LDAM-DRW: ce_i = w_{y_i} CE_i (class-weighted, unreduced),
    p_i = exp(−ce_i), loss = mean_i (1 − p_i)^γ ce_i. With weights on, its modulating factor uses the
    weighted CE and the mean is not normalised by Σw (docs/methods.md §1 pitfall 2). Without weights both
    parities agree. ``sample_weight`` c [B] multiplies each sample's term, the normaliser unchanged
    (batch mixing).

    Shape:
        logits [B, C] (cast to float32), targets [B] int64, weight [C] or None, sample_weight [B] or None
        -> scalar float32.
    """
    gamma = check_gamma(gamma)
    if parity not in PARITIES:
        raise ValueError(f"focal parity must be one of {', '.join(PARITIES)} (got '{parity}')")
    logits, targets = prepare(logits, targets)
    weight = weight_on(weight, logits)
    if parity == "ldam":
        ce = F.cross_entropy(logits, targets, weight=weight, reduction="none")
        terms = _modulate(-torch.expm1(-ce), gamma) * ce
        return terms.mean() if sample_weight is None else reduce_terms(terms, targets, None, sample_weight)
    loss = focal_terms(logits, targets, gamma)
    if sample_weight is not None:
        return reduce_terms(loss, targets, weight, sample_weight)
    if weight is None:
        return loss.mean()
    w = weight[targets]
    return (w * loss).sum() / w.sum()


class FocalLoss(ClassWeighted):
    """Softmax focal loss with optional class weights (float32 buffer ``weight`` [C] or None).

    See :func:`focal_loss` for the two parities. γ = 0 gives (weighted) CE.

    Args:
        gamma: focusing parameter γ >= 0 (1 in the LDAM CIFAR baseline).
        weight: per-class weights w_c, or None.
        parity: ``"default"`` or ``"ldam"``.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, gamma: float = 1.0, weight: Optional[CountsLike] = None, parity: str = "default") -> None:
        super().__init__(weight)
        self.gamma = check_gamma(gamma)
        if parity not in PARITIES:
            raise ValueError(f"focal parity must be one of {', '.join(PARITIES)} (got '{parity}')")
        self.parity = parity

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.weight, self.parity, sample_weight)

    def sample_weights(self, targets: Tensor) -> Optional[Tensor]:
        """Each sample's weight in the loss's weighted mean (None: a plain mean, as the ldam parity's)."""
        return None if self.parity == "ldam" else sample_weights(self.weight, targets)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, parity={self.parity!r}"
