"""Supervised contrastive loss, the "L_out" form (Khosla et al., arXiv 2004.11362; docs/methods.md §2.7).

It is the reference that BCL reduces to (docs/methods.md §2.7); the anchors, the contrast set and the
input checks come from the shared core :mod:`longtail.losses.contrastive` (image-major anchor order:
anchor ``n·V + v`` is view ``v`` of image ``n``; ``reduction="none"`` returns the per-anchor losses in that
order).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from longtail.losses.contrastive import (anchor_rows, check_reduction, check_temperature, compute_dtype,
                                         contrast_set, flatten_views, no_autocast, reduce_anchors)

__all__ = ["SupConLoss", "anchor_rows", "check_reduction", "check_temperature", "compute_dtype", "flatten_views",
           "no_autocast", "reduce_anchors"]

class SupConLoss(nn.Module):
    """Supervised contrastive loss, L_out form.

    For anchor i (each of the N·V embeddings), with P(i) the other embeddings of the same label and
    A(i) all other embeddings:
    L_i = −(1/|P(i)|) Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) ).
    The loss is the mean of L_i over anchors. An anchor without positives (its image is the only one
    of its class and V = 1) has no defined L_i: it is skipped, i.e. excluded from the mean and given
    0 in ``reduction="none"``. If no anchor has a positive the loss is 0.

    The math runs in float32 even under autocast (float64 inputs stay float64). Embeddings are used as
    given; L2-normalise them first.

    Args:
        temperature: τ > 0.
        reduction: ``"mean"`` (scalar) or ``"none"`` (per-anchor losses, image-major order).

    Shape:
        embeddings [N, V, D] (L2-normalised), labels [N] integer, ref_embeddings [R, D] with ref_labels [R]
        (extra entries of the contrast set, never anchors) or None, local_range (start, end) or None
        -> scalar, or [N·V] (``[(end − start)·V]`` with ``local_range``) for ``reduction="none"``.
        float32 (float64 for float64 inputs).

    ``local_range=(start, end)``: for DDP. ``embeddings``/``labels`` are the all-gathered global batch;
    only the anchors of images start..end−1 (all their views) enter the loss, and the contrast set is
    the whole global batch.
    """

    def __init__(self, temperature: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.reduction = check_reduction(reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, ref_embeddings: Optional[Tensor] = None,
                ref_labels: Optional[Tensor] = None, local_range: Optional[tuple[int, int]] = None) -> Tensor:
        cs = contrast_set(embeddings, labels, ref_embeddings, ref_labels, local_range)
        with no_autocast(cs.z.device):
            sim = cs.similarity(self.temperature)  # [A, M]
            is_self = cs.is_self()
            log_prob = sim - torch.logsumexp(sim.masked_fill(is_self, float("-inf")), dim=1, keepdim=True)
            pos = cs.same_label() & ~is_self
            n_pos = pos.sum(1)
            valid = n_pos > 0
            loss = -torch.where(pos, log_prob, 0.0).sum(1) / n_pos.clamp_min(1)
            loss = torch.where(valid, loss, 0.0)
        return reduce_anchors(loss, valid, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
