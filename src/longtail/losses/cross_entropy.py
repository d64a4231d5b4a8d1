"""(Weighted) softmax cross-entropy (docs/methods.md §0.1-§0.2, §1: CE and the DRW switch)."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from longtail.losses._common import (ClassWeighted, CountsLike, check_smoothing, prepare, reduce_terms, sample_weights,
                                     weight_on)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weight: Optional[Tensor] = None,
                           label_smoothing: float = 0.0, sample_weight: Optional[Tensor] = None) -> Tensor:
    """CE(s, y) = −s_y + logsumexp_c s_c, averaged with PyTorch's weighted-mean semantics.

    loss = Σ_i w_{y_i} CE_i / Σ_i w_{y_i}  (plain mean when ``weight`` is None).

    With ``label_smoothing`` ε > 0 (``torch.nn.functional.cross_entropy``'s definition), with
    log p = log_softmax(s): CE_i = −(1 − ε) w_{y_i} log p_{y_i} − (ε / C) Σ_c w_c log p_c (w ≡ 1 without
    weights), and the mean is still divided by Σ_i w_{y_i}.

    ``sample_weight`` c [B] multiplies each term, the normaliser unchanged: Σ_i c_i w_{y_i} CE_i / Σ_i w_{y_i}
    (batch mixing).

    Shape:
        logits [B, C] (any float dtype; computed in float32), targets [B] int64, weight [C] or None,
        sample_weight [B] or None -> scalar float32.
    """
    logits, targets = prepare(logits, targets)
    if sample_weight is not None:
        w = weight_on(weight, logits)
        terms = F.cross_entropy(logits, targets, weight=w, label_smoothing=check_smoothing(label_smoothing),
                                reduction="none")  # w_{y_i}-weighted (and smoothed) terms
        return reduce_terms(terms, targets, w, sample_weight, weighted=True)
    if label_smoothing:
        return F.cross_entropy(logits, targets, weight=weight_on(weight, logits),
                               label_smoothing=check_smoothing(label_smoothing))
    return F.cross_entropy(logits, targets, weight=weight_on(weight, logits))


class CrossEntropyLoss(ClassWeighted):
    """Softmax cross-entropy with optional per-class weights (a float32 buffer ``weight`` [C] or None).

    ``loss = Σ_i w_{y_i}·CE(s_i, y_i) / Σ_i w_{y_i}``, the mean over the batch when unweighted.
    DRW calls :meth:`set_weight` at its switch epoch. ``label_smoothing`` ε: see
    :func:`weighted_cross_entropy` (0 = off).

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, weight: Optional[CountsLike] = None, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = check_smoothing(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        """``sample_weight`` c [B] multiplies each sample's term, the normaliser unchanged (batch mixing)."""
        return weighted_cross_entropy(logits, targets, self.weight, self.label_smoothing, sample_weight)

    def sample_weights(self, targets: Tensor) -> Optional[Tensor]:
        """Each sample's weight in the loss's weighted mean (None: a plain mean)."""
        return sample_weights(self.weight, targets)
