"""Small helpers for torch.distributed; every one is a no-op / identity on a single process.

"Distributed" means a default process group is initialised (torchrun + ``init_process_group``).
Without one, ``rank() == 0``, ``world_size() == 1`` and the gathers return their input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files and logs)."""
    return rank() == 0


def local_range(n_local: int) -> tuple[int, int]:
    """This rank's rows ``[start, end)`` in a tensor gathered from equal ``n_local``-row shares."""
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 1:
        raise ValueError(f"n_local must be a positive int, this rank's batch size (got {n_local!r})")
    r = rank()
    return r * n_local, (r + 1) * n_local


def _gather(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n = x.shape[0]
        return _gather(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Each rank holds the gradient of its own loss w.r.t. the whole gathered tensor; the true
        # gradient w.r.t. this rank's slice is the sum over ranks of their gradients for that slice.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = dist.get_rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably.

    Gradient semantics: the backward pass all-reduces (sums) the incoming gradient over ranks and
    returns this rank's slice, so ``x`` receives Σ_r ∂L_r/∂x, the gradient of the *sum* of all ranks'
    losses. DDP then averages parameter gradients over ranks, so the final gradient is that of
    (1/R)·Σ_r L_r: with each rank's loss a mean over its own anchors (``local_range``) and equal
    shares, exactly the single-process gradient of the full-batch mean. Every rank must call backward
    (the all-reduce is a collective), as under DDP anyway.

    Every rank must pass the same shape (equal per-rank batch sizes); the result is in rank order.
    On a single process it returns ``x`` itself.

    Shape:
        x [n, ...] on every rank -> [R·n, ...].
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (the result is detached).

    Use it for labels and metrics. For embeddings in a contrastive loss it changes the gradient:
    other ranks' losses no longer reach this rank's encoder (METHODS.md §2.6 item 5). On a single
    process it returns ``x.detach()``.

    Shape:
        x [n, ...] on every rank (same shape) -> [R·n, ...].
    """
    if not is_distributed():
        return x.detach()
    with torch.no_grad():
        return _gather(x.detach())
