"""Label-distribution-aware margin loss (Cao et al., arXiv 1906.07413; docs/methods.md §1)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.losses._common import (CountsLike, as_class_weight, as_counts, check_smoothing, prepare, reduce_terms,
                                     sample_weights, weight_on)


def ldam_margins(counts: CountsLike, max_margin: float = 0.5) -> Tensor:
    """Δ_c = K · n_c^(−1/4), with K chosen so that max_c Δ_c = ``max_margin``.

    Shape:
        counts [C] (each > 0) -> margins [C] float32 (CPU).
    """
    if not max_margin >= 0:
        raise ValueError(f"LDAM max_margin must be >= 0 (got {max_margin}); the paper uses 0.5")
    m = as_counts(counts).pow(-0.25)
    return (m * (max_margin / m.max())).to(torch.float32)


class LDAMLoss(nn.Module):
    """LDAM: CE(σ·(cos − Δ_y·e_y), y), optionally class-weighted (DRW).

    The input is the cosine head's *scaled* output s = σ·cos (``CosineHead``, whose scale must equal
    ``scale``). Subtracting σ·Δ_y from the target logit gives CE(s − σΔ_y e_y) = CE(σ(cos − Δ_y e_y)),
    the paper's loss. Reduction: Σ_i w_{y_i} CE_i / Σ_i w_{y_i} (mean without weights). Inference uses
    argmax s, with no margin.

    Args:
        counts: training counts n_c, each > 0.
        max_margin: max_c Δ_c (0.5).
        scale: σ of the cosine head (30).
        weight: per-class weights (DRW sets them with :meth:`set_weight`), or None.
        label_smoothing: ε (0 = off): the target is smoothed as ``torch.nn.functional.cross_entropy``
            does, on the *margin-adjusted* logits z = s − σΔ_y e_y:
            −(1 − ε) w_y log softmax(z)_y − (ε / C) Σ_c w_c log softmax(z)_c, divided by Σ_i w_{y_i}.

    Buffers: ``margins`` [C] float32 (Δ_c, unscaled), ``weight`` [C] float32 or None.

    Shape:
        logits [B, C] (any float dtype, cast to float32 first), targets [B] int64 -> scalar float32.
    """

    def __init__(self, counts: CountsLike, max_margin: float = 0.5, scale: float = 30.0,
                 weight: Optional[CountsLike] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"LDAM scale must be > 0 and equal the cosine head's scale (got {scale})")
        self.scale, self.max_margin = float(scale), float(max_margin)
        self.label_smoothing = check_smoothing(label_smoothing)
        self.register_buffer("margins", ldam_margins(counts, max_margin), persistent=False)
        w = as_class_weight(weight)
        if w is not None and w.shape != self.margins.shape:
            raise ValueError(f"weight has {w.shape[0]} entries but counts have {self.margins.shape[0]}")
        self.register_buffer("weight", w, persistent=False)

    def set_weight(self, weight: Optional[CountsLike]) -> None:
        """Replace the class weights (None: unweighted). Moved to the margins' device."""
        new = as_class_weight(weight)
        if new is not None:
            if new.shape != self.margins.shape:
                raise ValueError(f"weight has {new.shape[0]} entries but counts have {self.margins.shape[0]}")
            new = new.to(self.margins.device)
        self.weight = new

    def forward(self, logits: Tensor, targets: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        """``sample_weight`` c [B] multiplies each sample's term, the normaliser unchanged (batch mixing)."""
        logits, targets = prepare(logits, targets, num_classes=self.margins.shape[0])
        margins = self.margins.to(device=logits.device, dtype=torch.float32)
        shift = (self.scale * margins[targets])[:, None]
        # Only the target column moves: scatter_add keeps it one fused, sample-loop-free op.
        adjusted = logits.scatter_add(1, targets[:, None], -shift)
        if sample_weight is not None:
            w = weight_on(self.weight, logits)
            terms = F.cross_entropy(adjusted, targets, weight=w, label_smoothing=self.label_smoothing, reduction="none")
            return reduce_terms(terms, targets, w, sample_weight, weighted=True)
        if self.label_smoothing:
            return F.cross_entropy(adjusted, targets, weight=weight_on(self.weight, logits),
                                   label_smoothing=self.label_smoothing)
        return F.cross_entropy(adjusted, targets, weight=weight_on(self.weight, logits))

    def sample_weights(self, targets: Tensor) -> Optional[Tensor]:
        """Each sample's weight in the loss's weighted mean (None: a plain mean)."""
        return sample_weights(self.weight, targets)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, max_margin={self.max_margin}"
