"""Where reading a tensor's values on the host is free, and where it is a device sync.

On a GPU, reading a value (``int(t)``, ``t.tolist()``) or an op whose output size depends on the data
(``nonzero``, ``bincount``) makes the CPU wait for the device, which stalls the training loop. On CPU the
same reads cost nothing, so input checks with clear errors (a label out of range) and data-dependent
shortcuts (grouping samples by augmentation op) are done there only. Every such choice in the training
step goes through :func:`reads_are_free`, one switch the tests flip to check the GPU path on CPU.
"""

from __future__ import annotations

from torch import Tensor


def reads_are_free(t: Tensor) -> bool:
    """True when reading ``t``'s values on the host costs no device sync (``t`` lives on the CPU)."""
    return t.device.type == "cpu"
