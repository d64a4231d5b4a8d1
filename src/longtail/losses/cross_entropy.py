"""(Weighted) softmax cross-entropy (docs/methods.md §0.1-§0.2, §1: CE and the DRW switch)."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from longtail.losses._common import ClassWeighted, CountsLike, prepare, reduce_terms, weight_on


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weight: Optional[Tensor] = None,
                           sample_weight: Optional[Tensor] = None) -> Tensor:
    """CE(s, y) = −s_y + logsumexp_c s_c, averaged with PyTorch's weighted-mean semantics.

    loss = Σ_i w_{y_i} CE_i / Σ_i w_{y_i}  (plain mean when ``weight`` is None). ``sample_weight`` c [B]
    multiplies each term, the normaliser unchanged: Σ_i c_i w_{y_i} CE_i / Σ_i w_{y_i} (batch mixing).

    Shape:
        logits [B, C] (any float dtype; computed in float32), targets [B] int64, weight [C] or None,
        sample_weight [B] or None -> scalar float32.
    """
    logits, targets = prepare(logits, targets)
    if sample_weight is not None:
        terms = F.cross_entropy(logits, targets, reduction="none")
        return reduce_terms(terms, targets, weight_on(weight, logits), sample_weight)
    return F.cross_entropy(logits, targets, weight=weight_on(weight, logits))


class CrossEntropyLoss(ClassWeighted):
    """Softmax cross-entropy with optional per-class weights (a float32 buffer ``weight`` [C] or None).

    ``loss = Σ_i w_{y_i}·CE(s_i, y_i) / Σ_i w_{y_i}``, the mean over the batch when unweighted.
    DRW calls :meth:`set_weight` at its switch epoch.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, weight: Optional[CountsLike] = None) -> None:
        super().__init__(weight)

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return weighted_cross_entropy(logits, targets, self.weight, sample_weight)
