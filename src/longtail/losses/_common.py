"""Input checks and conversions shared by the classification losses (internal)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

CountsLike = Union[Tensor, np.ndarray, Sequence[float]]


def as_counts(counts: CountsLike, name: str = "counts") -> Tensor:
    """Per-class training counts n_c as a float64 CPU tensor [C]; every n_c must be finite and > 0.

    A zero count has no prior (log 0 = −inf) and no class-balanced weight (1 − β⁰ = 0), so it is an
    error rather than a silent NaN.
    """
    t = torch.as_tensor(np.asarray(counts.detach().cpu() if isinstance(counts, Tensor) else counts),
                        dtype=torch.float64)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of per-class counts (got shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite (got {t.tolist()})")
    bad = (t <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name} must be > 0 for every class; class(es) {bad[:10]} have "
                         f"{[t[i].item() for i in bad[:10]]}. Every class needs at least one training sample")
    return t


def as_class_weight(weight: Optional[CountsLike], name: str = "weight") -> Optional[Tensor]:
    """Per-class loss weights as a float32 tensor [C] (kept on its device), or None."""
    if weight is None:
        return None
    w = torch.as_tensor(weight).detach()
    if w.dim() != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a 1-D tensor of per-class weights (got shape {tuple(w.shape)})")
    w = w.to(torch.float32)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (got {w.tolist()[:10]}...)")
    return w


class ClassWeighted(torch.nn.Module):
    """A loss with optional per-class weights ``weight`` [C] float32 (a non-persistent buffer) that a schedule
    can replace with :meth:`set_weight` (DRW)."""

    def __init__(self, weight: Optional[CountsLike] = None) -> None:
        super().__init__()
        self.register_buffer("weight", as_class_weight(weight), persistent=False)

    def set_weight(self, weight: Optional[CountsLike]) -> None:
        """Replace the class weights (None: unweighted).

        The new weights go to the device of the previous ones; with none before, pass them on the
        training device (forward would otherwise copy them to the logits' device every step).
        """
        new = as_class_weight(weight)
        if new is not None and self.weight is not None:
            new = new.to(self.weight.device)
        self.weight = new


def check_smoothing(label_smoothing: float) -> float:
    """Label smoothing epsilon in [0, 1) (0 = off)."""
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ValueError(f"label_smoothing must be in [0, 1) (got {label_smoothing!r}); 0 = off, 0.1 is common")
    return float(label_smoothing)


def sample_weights(weight: Optional[Tensor], targets: Tensor) -> Optional[Tensor]:
    """The weight w_{y_i} of each sample in a weighted mean Σ_i w_{y_i} l_i / Σ_i w_{y_i}, or None (plain mean)."""
    return None if weight is None else weight.to(targets.device, torch.float32)[targets]


def check_gamma(gamma: float) -> float:
    if not (isinstance(gamma, (int, float)) and np.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"focal gamma must be a finite number >= 0 (got {gamma!r}); 0 gives plain CE")
    return float(gamma)


def prepare(logits: Tensor, targets: Tensor, num_classes: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Check shapes and return (float32 logits [B, C], int64 targets [B]).

    Target values are not range-checked here: that would force a GPU sync every step. Out-of-range
    targets fail inside ``cross_entropy`` / ``gather``.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C] (got shape {tuple(logits.shape)})")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must be [B] = [{logits.shape[0]}] class indices to match logits "
                         f"{tuple(logits.shape)} (got shape {tuple(targets.shape)})")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices (got dtype {targets.dtype}); "
                         "soft labels are not supported by this loss")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but the loss was built for {num_classes}")
    return logits.float(), targets.long()


def weight_on(weight: Optional[Tensor], logits: Tensor) -> Optional[Tensor]:
    """The class-weight buffer as float32 on the logits' device (a no-op when already there)."""
    if weight is None:
        return None
    if weight.shape[0] != logits.shape[1]:
        raise ValueError(f"class weight has {weight.shape[0]} entries but logits have {logits.shape[1]} classes")
    return weight.to(device=logits.device, dtype=torch.float32)


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Images per class in ``labels`` as int64 [C], by a scatter-add on the labels' device.

    Not ``bincount``: that reads the largest label on the host, a GPU->CPU sync on every step.
    """
    return torch.zeros(num_classes, dtype=torch.int64, device=labels.device).index_add_(
        0, labels, torch.ones_like(labels))


def reduce_terms(terms: Tensor, targets: Tensor, weight: Optional[Tensor], sample_weight: Tensor,
                 weighted: bool = False) -> Tensor:
    """A loss's reduction with per-sample coefficients c_i (batch mixing's label weights):
    Σ_i c_i·w_{y_i}·ℓ_i / Σ_i w_{y_i} with class weights, Σ_i c_i·ℓ_i / B without. With c ≡ 1 this is the
    loss's own reduction: the normaliser does not depend on c. ``weighted=True``: the terms already carry
    their class weight (t_i = w_{y_i}·ℓ_i, or a label-smoothed CE's weighted term), so ``weight`` only
    gives the normaliser.

    Shape:
        terms [B] float32 (per-sample terms), targets [B] int64, weight [C] float32 or None,
        sample_weight [B] -> scalar float32.
    """
    if sample_weight.shape != terms.shape:
        raise ValueError(f"sample_weight must be [B] = [{terms.shape[0]}] (got shape {tuple(sample_weight.shape)})")
    c = sample_weight.to(terms.dtype)
    if weight is None:
        return (c * terms).mean()
    w = weight[targets]
    return ((c * terms) if weighted else (c * w * terms)).sum() / w.sum()
