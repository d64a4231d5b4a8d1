"""Where reading a tensor's values on the host is free, and where it is a device sync.

On a GPU, reading a value (``int(t)``, ``t.tolist()``), an op whose output size depends on the data
(``nonzero``, ``bincount``), or a tensor built from host data (``torch.tensor([...], device=...)``, a
blocking host-to-device copy) makes the CPU wait for the device, which stalls the training loop. On CPU
the same operations cost nothing, so input checks with clear errors (a label out of range) and
data-dependent shortcuts (grouping samples by augmentation op) are done there only. Every such choice in
the training step goes through :func:`reads_are_free`, one switch the tests flip to check the GPU path on
CPU; constants made of Python numbers come from :func:`constant`, built once per device.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Callable, Hashable, Iterable

import torch
from torch import Tensor


def _compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if fn is None:  # pragma: no cover - older torch
        from torch import _dynamo

        fn = _dynamo.is_compiling
    return bool(fn())


def reads_are_free(t: Tensor) -> bool:
    """True when reading ``t``'s values on the host costs no device sync (``t`` lives on the CPU) and
    breaks no graph (not inside ``torch.compile``, where a read would split the step)."""
    return t.device.type == "cpu" and not _compiling()


@lru_cache(maxsize=512)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def constant(values: float | Iterable[float], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """The 1-D tensor of ``values`` (Python numbers) on ``device``, made once per (values, dtype, device).

    A tensor built from Python numbers on a GPU is a blocking host-to-device copy, so a constant used on
    every step (a fill colour, normalisation statistics, an identity matrix) is built once and then shared.
    Inside ``torch.compile`` it is an ordinary graph constant. The result is shared by every caller:
    never modify it in place.
    """
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if _compiling():
        return torch.tensor(vals, dtype=dtype, device=device)
    return _constant(vals, dtype, torch.device(device))


_CACHED: "OrderedDict[tuple, Tensor]" = OrderedDict()
_CACHED_MAX = 256


def cached(key: Hashable, device: torch.device | str, build: Callable[[torch.device], Tensor]) -> Tensor:
    """A structured constant (an index pattern, a mask, a table) for ``key`` on ``device``: ``build(device)``
    once, then the same tensor. ``key`` must name everything the result depends on. Inside
    ``torch.compile`` ``build`` is traced instead (no lookup the graph would have to guard). The result is
    shared by every caller: never modify it in place."""
    device = torch.device(device)
    if _compiling():
        return build(device)
    k = (key, device)
    t = _CACHED.get(k)
    if t is None:
        t = build(device)
        _CACHED[k] = t
        if len(_CACHED) > _CACHED_MAX:
            _CACHED.popitem(last=False)
    else:
        _CACHED.move_to_end(k)
    return t


def clear_constants() -> None:
    """Forget every cached constant (tests use it to start from the same one-off copies)."""
    _constant.cache_clear()
    _CACHED.clear()
