"""An exponential moving average (EMA) of a network's weights, kept beside them and never in their place.

After every optimiser step each floating-point entry of the network's ``state_dict`` (parameters and
buffers such as BatchNorm's running statistics) moves towards the network's value::

    ema <- decay * ema + (1 - decay) * w        (torch._foreach_lerp_, on the device, no host read)

Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. The average starts as a copy of the
initial weights, so it needs no bias correction; ``warmup=True`` uses the decay
``min(decay, (1 + n) / (10 + n))`` at the n-th update (0-based), the rule of TensorFlow's
``ExponentialMovingAverage(num_updates=n)``, so that early averages forget the random initialisation
sooner. ``module`` is a separate copy of the network holding the averaged weights, for evaluation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """The EMA of ``network``'s weights (a deep copy, updated in place by :meth:`update`).

    Args:
        network: the trained module (its ``state_dict`` tensors are read after each step).
        decay: in (0, 1), e.g. 0.999.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update n.
    """

    def __init__(self, network: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1) (got {decay!r})")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.module = copy.deepcopy(network)
        self.module.requires_grad_(False)
        self.module.eval()
        self._bind(network)

    def _bind(self, network: nn.Module) -> None:
        own, src = self.module.state_dict(), network.state_dict()
        if own.keys() != src.keys():
            raise ValueError("the EMA copy and the network have different state_dict keys")
        floats = [k for k in own if own[k].is_floating_point()]
        self._ema = [own[k] for k in floats]
        self._src = [src[k] for k in floats]
        self._ema_other = [own[k] for k in own if not own[k].is_floating_point()]
        self._src_other = [src[k] for k in own if not own[k].is_floating_point()]

    def decay_at(self, n: int) -> float:
        """The decay of update ``n`` (0-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights (call after each optimiser step)."""
        weight = 1.0 - self.decay_at(self.updates)
        if self._ema:
            torch._foreach_lerp_(self._ema, self._src, weight)
        if self._ema_other:
            torch._foreach_copy_(self._ema_other, self._src_other)
        self.updates += 1

    def state_dict(self) -> dict:
        """Weights, decay and number of updates: what a checkpoint needs to resume the average exactly."""
        return {"weights": self.module.state_dict(), "decay": self.decay, "warmup": self.warmup,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
