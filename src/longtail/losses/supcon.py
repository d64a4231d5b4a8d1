"""Supervised contrastive loss, the "L_out" form (Khosla et al., arXiv 2004.11362; METHODS.md §2.7).

It is the reference that BCL reduces to (METHODS.md §2.7) and it is written independently of
:mod:`longtail.losses.bcl`, so the reduction test compares two different code paths. The input
checks shared by both contrastive losses live here.

Anchor order: the embeddings ``[N, V, D]`` are flattened image-major, so anchor ``n·V + v`` is view
``v`` of image ``n``. ``reduction="none"`` returns the per-anchor losses in that order.
"""

from __future__ import annotations

import contextlib
import math
from typing import ContextManager, Optional

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "none")


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (got {temperature!r}); "
                         "0.1 (CIFAR) and 0.07 (ImageNet-LT, iNat) are the published values")
    return float(temperature)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)} (got {reduction!r})")
    return reduction


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (tests); every other float dtype is computed in float32 (METHODS §0.2)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def flatten_views(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Check ``[N, V, D]`` embeddings and ``[N]`` labels; return image-major anchors and their labels.

    Shape:
        embeddings [N, V, D] float, labels [N] integer -> ([N·V, D] float32 or float64, [N·V] int64).
    """
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 3:
        got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be a [N, V, D] tensor (images, views, dim); got {got}. "
                         "Stack the views with torch.stack([z1, z2], dim=1)")
    if not embeddings.dtype.is_floating_point:
        raise ValueError(f"embeddings must be a float tensor (got dtype {embeddings.dtype})")
    n, v, d = embeddings.shape
    if n == 0 or v == 0 or d == 0:
        raise ValueError(f"embeddings must be non-empty (got shape {tuple(embeddings.shape)})")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a [N] = [{n}] tensor of class indices, one per image "
                         f"(not per view); got {got}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices (got dtype {labels.dtype})")
    if labels.device != embeddings.device:
        raise ValueError(f"labels are on {labels.device} but embeddings on {embeddings.device}; "
                         "move both to the same device")
    flat = embeddings.reshape(n * v, d).to(compute_dtype(embeddings))
    return flat, labels.long().repeat_interleave(v)


def anchor_rows(n: int, v: int, local_range: Optional[tuple[int, int]]) -> tuple[int, int]:
    """Rows ``[r0, r1)`` of the flattened anchors that enter the loss: all views of images start..end-1."""
    if local_range is None:
        return 0, n * v
    ok = isinstance(local_range, (tuple, list)) and len(local_range) == 2 \
        and all(isinstance(x, int) and not isinstance(x, bool) for x in local_range)
    if not ok or not 0 <= local_range[0] < local_range[1] <= n:
        raise ValueError(f"local_range must be a pair (start, end) of image indices with 0 <= start < end <= "
                         f"N = {n} (got {local_range!r}); use engine.distributed.local_range(n_local)")
    return local_range[0] * v, local_range[1] * v


def no_autocast(device: torch.device) -> ContextManager:
    """Disable autocast around the similarity matmul, which would otherwise run in bf16/fp16."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support: nothing to disable
        return contextlib.nullcontext()


def reduce_anchors(loss: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Mean over the anchors that have a positive (no host sync), or the per-anchor vector."""
    if reduction == "none":
        return loss
    return loss.sum() / valid.sum().clamp_min(1)


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
        embeddings [N, V, D] (L2-normalised), labels [N] integer, local_range (start, end) or None
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

    def forward(self, embeddings: Tensor, labels: Tensor,
                local_range: Optional[tuple[int, int]] = None) -> Tensor:
        z, y = flatten_views(embeddings, labels)
        r0, r1 = anchor_rows(embeddings.shape[0], embeddings.shape[1], local_range)
        with no_autocast(z.device):
            sim = z[r0:r1] @ z.T / self.temperature  # [A, N·V]
            cols = torch.arange(z.shape[0], device=z.device)
            is_self = cols[None, :] == cols[r0:r1, None]
            log_prob = sim - torch.logsumexp(sim.masked_fill(is_self, float("-inf")), dim=1, keepdim=True)
            pos = (y[r0:r1, None] == y[None, :]) & ~is_self
            n_pos = pos.sum(1)
            valid = n_pos > 0
            loss = -torch.where(pos, log_prob, 0.0).sum(1) / n_pos.clamp_min(1)
            loss = torch.where(valid, loss, 0.0)
        return reduce_anchors(loss, valid, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
