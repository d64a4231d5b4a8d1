"""Class-balanced loss via the effective number of samples (Cui et al., arXiv 1901.05555; docs/methods.md §1)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.losses._common import (CountsLike, as_counts, check_gamma, check_smoothing, prepare, reduce_terms,
                                     sample_weights, weight_on)
from longtail.losses.focal import PARITIES, focal_loss, focal_terms

LOSS_KINDS = ("ce", "focal", "sigmoid_focal")
#: batch: Σ_i w_{y_i}·L_i / B (the class-balanced paper's code); normalized: Σ_i w_{y_i}·L_i / Σ_i w_{y_i}
REDUCTIONS = ("batch", "normalized")


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


def sigmoid_focal_terms(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """One-vs-all sigmoid focal loss of every (sample, class) pair, unreduced (the class-balanced paper's
    focal loss).

    With z = s_{ic} and y = 1 for c = y_i, 0 otherwise, the paper writes
    FL = exp(−γ·y·z − γ·log(1 + exp(−z))) · BCE(z, y), BCE(z, y) = −y·log σ(z) − (1 − y)·log(1 − σ(z)).
    The modulator is (1 − σ(z))^γ for y = 1 and σ(z)^γ for y = 0, i.e. (1 − p_t)^γ. With the signed
    logit z_t = z for y = 1 and −z for y = 0 this is

        FL = exp(γ·log σ(−z_t)) · (−log σ(z_t)),

    computed with ``logsigmoid``: finite, with finite gradients, for any |z| (±100 included). γ = 0
    gives the plain binary cross-entropy.

    Shape:
        logits [B, C] float32, targets [B] int64 (both already checked) -> [B, C] float32.
    """
    y = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
    z_t = (2.0 * y - 1.0) * logits
    bce = -F.logsigmoid(z_t)
    if gamma == 0:
        return bce
    return torch.exp(gamma * F.logsigmoid(-z_t)) * bce


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss with fixed weights w from :func:`class_balanced_weights`.

    Per-sample loss L_i by ``loss``:

    * ``"ce"``: softmax CE_i;
    * ``"focal"``: the softmax focal loss −(1 − p_{y_i})^γ log p_{y_i} (:func:`~longtail.losses.focal.focal_loss`);
    * ``"sigmoid_focal"``: the class-balanced paper's sigmoid focal loss, summed over the C one-vs-all
      terms of :func:`sigmoid_focal_terms` (sample i's weight w_{y_i} on each of its C terms, as in the
      paper's code).

    Reduction by ``reduction``: ``"batch"`` (the paper's code, TensorFlow's default),
    Σ_i w_{y_i}·L_i / B; ``"normalized"`` (PyTorch's weighted CE, LDAM-DRW's re-weighting),
    Σ_i w_{y_i}·L_i / Σ_i w_{y_i}. They differ by the factor Σ_i w_{y_i} / B of each batch.
    ``parity="ldam"`` with ``loss="focal"`` is LDAM-DRW's focal loss, whose own reduction is the batch
    mean: it needs ``reduction="batch"`` (with ``"sigmoid_focal"`` it is an error; ``"ce"`` ignores it).
    Buffers: ``counts`` [C] float32 and ``weight`` [C] float32. ``label_smoothing`` ε (``loss="ce"`` only: the focal losses have no smoothed form) smooths
    the target as ``torch.nn.functional.cross_entropy`` does, with w_c on each class's share.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, counts: CountsLike, beta: float = 0.9999, loss: str = "ce", gamma: float = 1.0,
                 parity: str = "default", reduction: str = "batch", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if check_smoothing(label_smoothing) and loss != "ce":
            raise ValueError(f"label_smoothing applies to the class-balanced CE only (got loss='{loss}')")
        self.label_smoothing = float(label_smoothing)
        if loss not in LOSS_KINDS:
            raise ValueError(f"class-balanced loss must be one of {', '.join(LOSS_KINDS)} (got '{loss}')")
        if parity not in PARITIES:
            raise ValueError(f"focal parity must be one of {', '.join(PARITIES)} (got '{parity}')")
        if reduction not in REDUCTIONS:
            raise ValueError(f"class-balanced reduction must be one of {', '.join(REDUCTIONS)} (got '{reduction}')")
        if parity == "ldam" and (loss == "sigmoid_focal" or (loss == "focal" and reduction != "batch")):
            raise ValueError(f"focal parity 'ldam' is LDAM-DRW's softmax focal loss with its batch mean: it needs "
                             f"loss='focal' and reduction='batch' (got loss='{loss}', reduction='{reduction}')")
        self.beta, self.loss, self.gamma, self.parity = _check_beta(beta), loss, check_gamma(gamma), parity
        self.reduction = reduction
        self.register_buffer("counts", as_counts(counts).to(torch.float32), persistent=False)
        self.register_buffer("weight", class_balanced_weights(counts, beta), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        """``sample_weight`` c [B] multiplies each sample's term, the normaliser (B or Σ_i w_{y_i}) unchanged
        (batch mixing)."""
        logits, targets = prepare(logits, targets)
        weight = weight_on(self.weight, logits)
        if self.loss == "focal" and self.parity == "ldam":
            return focal_loss(logits, targets, self.gamma, weight, "ldam", sample_weight)
        if self.loss == "ce":
            terms = F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing,
                                    reduction="none")  # w_{y_i}-weighted (and smoothed) terms
        else:
            per_sample = focal_terms(logits, targets, self.gamma) if self.loss == "focal" else \
                sigmoid_focal_terms(logits, targets, self.gamma).sum(1)
            terms = weight[targets] * per_sample
        if sample_weight is not None:
            return reduce_terms(terms, targets, None if self.reduction == "batch" else weight, sample_weight,
                                weighted=True)
        total = terms.sum()
        return total / logits.shape[0] if self.reduction == "batch" else total / weight[targets].sum()

    def sample_weights(self, targets: Tensor) -> Optional[Tensor]:
        """Each sample's weight in the loss's normaliser (None: a plain mean over the batch, as with
        ``reduction="batch"`` and the ldam focal parity)."""
        if self.reduction == "batch" or (self.loss == "focal" and self.parity == "ldam"):
            return None
        return sample_weights(self.weight, targets)

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, loss={self.loss!r}, gamma={self.gamma}, parity={self.parity!r}, "
                f"reduction={self.reduction!r}")
