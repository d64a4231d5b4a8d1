"""Random draws of the batched augmentations, independent of the number of processes.

Every random augmentation op draws through :func:`rand`, :func:`randint` or :func:`randn` from a
``torch.Generator`` on the batch's device. Two contexts change which rows of a draw an op receives:

* :func:`batch_rows` (DDP): the draw is made for the whole global batch and one rank keeps its
  contiguous share, so each image gets the numbers a single process would give it;
* :func:`stacked` (identical views): ``k`` copies of the batch are augmented as one batch of ``k * B``
  rows (one set of kernel launches instead of ``k``), and the draw is made for ``k`` global batches, so
  that under DDP each copy's rows are again the rank's share of that copy.

Outside both contexts a draw is a plain ``torch.rand((B, ...), generator=g)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["batch_rows", "stacked", "rand", "randn", "randint"]

_ROWS: contextvars.ContextVar[Optional[tuple[int, int]]] = contextvars.ContextVar("longtail_aug_rows", default=None)
_COPIES: contextvars.ContextVar[int] = contextvars.ContextVar("longtail_aug_copies", default=1)


@contextlib.contextmanager
def batch_rows(offset: int, total: int):
    """Inside this block every random draw is made for ``total`` rows and rows ``offset`` … ``offset + B − 1``
    are used, where B is the batch the op sees.

    This is how a DDP rank augments its contiguous share of a global batch of ``total`` images (starting
    at ``offset``) with exactly the numbers that a single process, drawing for the whole batch from the
    same generator state, gives those images: augmentation does not depend on the world size.
    """
    if not (isinstance(offset, int) and isinstance(total, int) and 0 <= offset < total):
        raise ValueError(f"batch_rows needs 0 <= offset < total (got offset={offset!r}, total={total!r})")
    token = _ROWS.set((offset, total))
    try:
        yield
    finally:
        _ROWS.reset(token)


@contextlib.contextmanager
def stacked(copies: int):
    """Inside this block an op's batch is ``copies`` stacked copies of one batch of B rows.

    A draw for the stacked batch is made for ``copies`` whole (global) batches; copy c uses rows
    ``c * total + offset`` … of it, with ``offset`` and ``total`` from :func:`batch_rows` (0 and B outside).
    """
    if not (isinstance(copies, int) and copies >= 1):
        raise ValueError(f"stacked needs an int copies >= 1 (got {copies!r})")
    token = _COPIES.set(copies)
    try:
        yield
    finally:
        _COPIES.reset(token)


def _draw(make: Callable[[tuple], Tensor], n: int, rest: tuple) -> Tensor:
    k = _COPIES.get()
    if n % k:
        raise ValueError(f"a stacked batch of {n} rows is not {k} copies of one batch")
    b = n // k
    rows = _ROWS.get()
    offset, total = (0, b) if rows is None else rows
    if offset + b > total:
        raise ValueError(f"a batch of {b} rows does not fit at offset {offset} of a {total}-row global batch")
    t = make((k * total, *rest))
    if offset == 0 and b == total:
        return t
    return t.view(k, total, *rest)[:, offset:offset + b].reshape(n, *rest)


def rand(g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.rand(b, *rest)`` from ``g``; inside :func:`batch_rows` this batch's rows of a global draw."""
    return _draw(lambda shape: torch.rand(shape, generator=g, device=device), b, rest)


def randn(g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.randn(b, *rest)`` from ``g``, with the rows of :func:`rand`."""
    return _draw(lambda shape: torch.randn(shape, generator=g, device=device), b, rest)


def randint(low: int, high: int, g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.randint(low, high, (b, *rest))`` from ``g``, with the rows of :func:`rand`."""
    return _draw(lambda shape: torch.randint(low, high, shape, generator=g, device=device), b, rest)
