"""The core shared by the contrastive losses (SupCon, BCL, BBL): one anchor order, one contrast set.

Every contrastive loss takes the same arguments, in the spirit of pytorch-metric-learning::

    loss(embeddings [N, V, D], labels [N], [prototypes [C, D],] ref_embeddings=None, ref_labels=None,
         local_range=None)

* The anchors are the N·V embeddings flattened **image-major**: anchor ``n·V + v`` is view v of image n.
* The contrast set is, in this order: the N·V batch embeddings, then the reference entries
  (``ref_embeddings`` [R, D] or [R, V', D] with ``ref_labels`` [R]: a memory bank or a queue; they are
  never anchors and belong to no batch image), then any class centres a loss adds (label k for centre k).
* ``local_range=(start, end)`` (DDP): ``embeddings`` is the all-gathered global batch and only the views
  of images start … end−1 are anchors; everything else stays in the contrast set. The DDP gather and a
  loss's own memory (BBL's queue) are thus one path: entries of the contrast set that are not anchors.

:class:`ContrastSet` holds the entries with their labels and image ids, and gives the masks every loss
needs (self, same label, same image, batch entries) and the similarity matrix, computed in float32 even
under autocast (float64 inputs stay float64, for tests).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
from torch import Tensor

__all__ = ["ContrastSet", "contrast_set", "flatten_views", "anchor_rows", "no_autocast", "check_temperature",
           "check_reduction", "compute_dtype", "reduce_anchors", "REDUCTIONS"]

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
    """float64 stays float64 (tests); every other float dtype is computed in float32 (docs/methods.md §0.2)."""
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


@dataclass
class ContrastSet:
    """The anchors and the entries they are contrasted with.

    Attributes:
        z: [M, D] the contrast entries: the N·V batch embeddings (image-major), the references, the centres.
        labels: [M] their labels; images: [M] the batch image of each entry (-1 for references and centres).
        rows: ``(r0, r1)``, the anchors are entries r0 … r1−1 (batch entries).
        n_batch: N·V, the number of batch entries; views: V.
    """

    z: Tensor
    labels: Tensor
    images: Tensor
    rows: tuple[int, int]
    n_batch: int
    views: int

    @property
    def anchors(self) -> Tensor:
        return self.z[self.rows[0]:self.rows[1]]

    @property
    def anchor_labels(self) -> Tensor:
        return self.labels[self.rows[0]:self.rows[1]]

    def similarity(self, temperature: float) -> Tensor:
        """z_anchor · z_entry / τ for every anchor and entry, [A, M] (float32 even under autocast)."""
        with no_autocast(self.z.device):
            return self.anchors @ self.z.T / temperature

    def is_self(self) -> Tensor:
        """[A, M] True where the entry is the anchor itself."""
        cols = torch.arange(self.z.shape[0], device=self.z.device)
        return cols[None, :] == torch.arange(self.rows[0], self.rows[1], device=self.z.device)[:, None]

    def same_label(self) -> Tensor:
        """[A, M] True where the entry has the anchor's label (the anchor itself included)."""
        return self.anchor_labels[:, None] == self.labels[None, :]

    def with_centres(self, centres: Tensor) -> "ContrastSet":
        """This set with the C class centres appended (centre k has label k)."""
        k = torch.arange(centres.shape[0], device=self.labels.device)
        return ContrastSet(torch.cat([self.z, centres.to(self.z.dtype)]), torch.cat([self.labels, k]),
                           torch.cat([self.images, torch.full_like(k, -1)]), self.rows, self.n_batch, self.views)


def contrast_set(embeddings: Tensor, labels: Tensor, ref_embeddings: Optional[Tensor] = None,
                 ref_labels: Optional[Tensor] = None, local_range: Optional[tuple[int, int]] = None) -> ContrastSet:
    """The anchors of ``embeddings`` (views of the images in ``local_range``, default all) and the contrast
    set: every batch embedding, then the references.

    Shape:
        embeddings [N, V, D], labels [N], ref_embeddings [R, D] or [R, V', D] with ref_labels [R] -> a
        ContrastSet of M = N·V + R·V' entries.
    """
    z, y = flatten_views(embeddings, labels)
    n, v = embeddings.shape[:2]
    rows = anchor_rows(n, v, local_range)
    images = torch.arange(n, device=z.device).repeat_interleave(v)
    if ref_embeddings is None:
        return ContrastSet(z, y, images, rows, n * v, v)
    if ref_labels is None or ref_labels.dim() != 1 or ref_labels.shape[0] != ref_embeddings.shape[0]:
        raise ValueError("ref_embeddings need ref_labels, one label per reference (shape [R])")
    refs = ref_embeddings if ref_embeddings.dim() == 3 else ref_embeddings[:, None]
    rz, ry = flatten_views(refs, ref_labels.to(z.device))
    if rz.shape[1] != z.shape[1]:
        raise ValueError(f"ref_embeddings have dimension {rz.shape[1]} but embeddings {z.shape[1]}")
    return ContrastSet(torch.cat([z, rz.to(z.dtype)]), torch.cat([y, ry]),
                       torch.cat([images, torch.full_like(ry, -1)]), rows, n * v, v)
