"""Class-balanced loss via the effective number of samples (Cui et al., arXiv 1901.05555; docs/methods.md §1)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from longtail.losses._common import CountsLike, as_counts, check_gamma
from longtail.losses.cross_entropy import weighted_cross_entropy
from longtail.losses.focal import PARITIES, focal_loss

LOSS_KINDS = ("ce", "focal")


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"class-balanced beta must be in [0, 1) (got {beta!r}); typical: 0.9, 0.99, 0.999, 0.9999")
    return float(beta)


def class_balanced_weights(counts: CountsLike, beta: float) -> Tensor:
    """w_c = (1 − β) / (1 − β^{n_c}), rescaled so that Σ_c w_c = C.

    β = 0 gives w ≡ 1; w is non-increasing in n_c. Computed in float64 (β^{n_c} with β = 0.9999 and
    n_c in the thousands), returned as float32.

    Args:
        counts: training counts n_c, each > 0 (a zero count has no effective number: ValueError).
        beta: β in [0, 1).

    Shape:
        counts [C] -> weights [C] float32 (CPU).
    """
    beta = _check_beta(beta)
    n = as_counts(counts)
    # 1 − β^n = −expm1(n·log β) keeps precision for β near 1; β = 0 gives 1 for every n > 0.
    effective = -torch.expm1(n * math.log(beta)) if beta > 0 else torch.ones_like(n)
    w = (1.0 - beta) / effective
    return (w * (n.numel() / w.sum())).to(torch.float32)


class ClassBalancedLoss(nn.Module):
    """Class-balanced softmax CE or focal loss with fixed weights from :func:`class_balanced_weights`.

    ``loss="ce"``: Σ_i w_{y_i} CE_i / Σ_i w_{y_i}. ``loss="focal"``: the weighted focal loss of
    :func:`longtail.losses.focal.focal_loss` with ``gamma`` and ``parity``. Buffers: ``counts`` [C]
    float32 and ``weight`` [C] float32.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, counts: CountsLike, beta: float = 0.9999, loss: str = "ce", gamma: float = 1.0,
                 parity: str = "default") -> None:
        super().__init__()
        if loss not in LOSS_KINDS:
            raise ValueError(f"class-balanced loss must be one of {', '.join(LOSS_KINDS)} (got '{loss}')")
        if parity not in PARITIES:
            raise ValueError(f"focal parity must be one of {', '.join(PARITIES)} (got '{parity}')")
        self.beta, self.loss, self.gamma, self.parity = _check_beta(beta), loss, check_gamma(gamma), parity
        self.register_buffer("counts", as_counts(counts).to(torch.float32), persistent=False)
        self.register_buffer("weight", class_balanced_weights(counts, beta), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        if self.loss == "ce":
            return weighted_cross_entropy(logits, targets, self.weight, sample_weight)
        return focal_loss(logits, targets, self.gamma, self.weight, self.parity, sample_weight)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss={self.loss!r}, gamma={self.gamma}, parity={self.parity!r}"
