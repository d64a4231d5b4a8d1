"""Small helpers for torch.distributed; every one is a no-op / identity on a single process.

"Distributed" means a default process group is initialised (torchrun + ``init_process_group``).
Without one, ``rank() == 0``, ``world_size() == 1`` and the gathers return their input.
"""

from __future__ import annotations

import os

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
    other ranks' losses no longer reach this rank's encoder (docs/methods.md §2.6 item 5). On a single
    process it returns ``x.detach()``.

    Shape:
        x [n, ...] on every rank (same shape) -> [R·n, ...].
    """
    if not is_distributed():
        return x.detach()
    with torch.no_grad():
        return _gather(x.detach())


# ---------------------------------------------------------------------------- process group set-up

_OWNS_GROUP = False  # True when init_from_env created the group (so cleanup may destroy it)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (got {raw!r}); "
                         f"start distributed runs with torchrun") from None


def init_from_env(device_name: str = "auto") -> torch.device:
    """Join the process group torchrun describes in the environment and return this rank's device.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, inside ``init_process_group``, ``MASTER_ADDR``
    and ``MASTER_PORT``). With ``WORLD_SIZE > 1`` it initialises NCCL when the device is CUDA and gloo
    otherwise, and on CUDA pins this process to GPU ``LOCAL_RANK``. Without torchrun (or with one
    process) it only resolves the device. Calling it again when a group exists reuses that group.

    Args:
        device_name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``cuda:N`` is replaced by the local rank's
            GPU under torchrun: each process owns one GPU).
    """
    global _OWNS_GROUP
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device_name} but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    ws = _env_int("WORLD_SIZE", 1)
    if ws <= 1:
        if device_name == "auto":
            return torch.device("cuda" if want_cuda else "cpu")
        return torch.device(device_name)
    local = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    if want_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                             f"start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        dist.init_process_group("nccl" if want_cuda else "gloo")
        _OWNS_GROUP = True
    return device


def cleanup() -> None:
    """Destroy the process group if :func:`init_from_env` created it; otherwise do nothing."""
    global _OWNS_GROUP
    if _OWNS_GROUP and is_distributed():
        dist.destroy_process_group()
    _OWNS_GROUP = False


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place and return it (identity on one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over ranks, in place (identity on one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def wrap_ddp(network: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool = False):
    """``network`` wrapped in DistributedDataParallel when distributed, else ``network`` itself.

    The wrapper shares the module's parameters; save ``network.state_dict()`` (the plain module), never
    the wrapper's. Attribute look-ups the wrapper does not know go to the module.
    """
    if not is_distributed():
        return network
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids, output_device=ids[0] if ids else None,
                find_unused_parameters=find_unused_parameters)


def broadcast_buffers_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s buffers (e.g. BatchNorm running statistics) from rank ``src`` to all ranks.

    DDP broadcasts buffers at the start of each training forward, but each rank then updates its own
    running statistics with its share of the batch; call this before evaluating so every rank uses rank
    0's statistics, the ones rank 0 saves. No-op on one process.
    """
    if not is_distributed():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=src)
