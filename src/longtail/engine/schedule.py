"""Learning-rate schedules as plain functions of the 0-based epoch (nanoGPT style)."""

from __future__ import annotations

import math

from longtail.config import OptimConfig


def lr_at(epoch: int, total_epochs: int, o: OptimConfig) -> float:
    """Learning rate of 0-based ``epoch``.

    * warm-up: ``lr * (e + 1) / warmup_epochs`` for ``e < warmup_epochs`` (LDAM: lr·e/5, e = 1..5, 1-based);
    * ``step``: ``lr * gamma ** (number of milestones <= e)``; the LDAM recipe is milestones [160, 180]
      with gamma 0.01: ×0.01 for epochs 161-180 and ×0.0001 for 181-200 (1-based);
    * ``cosine``: ``lr * (1 + cos(pi * (e - w) / (E - w))) / 2`` after the warm-up;
    * ``bcl_cosine`` (BCL's official schedule, docs/methods.md §2.5): ``lr * (1 + cos(pi * (e - w + 1) / (E - w + 1))) / 2``
      after the warm-up, so epoch 0 is already slightly decayed and the last lr is not 0;
    * ``cosine_restarts`` (SGDR, Loshchilov & Hutter, ICLR 2017) after the warm-up: periods of
      ``T_0 = restart_period``, ``T_0·m``, ``T_0·m²``, ... epochs (``m = restart_mult``) follow each other;
      in a period of ``T_i`` epochs, ``t`` epochs in, ``lr * (1 + cos(pi * t / T_i)) / 2``: each period
      starts again at ``lr`` (a restart) and decays towards 0;
    * ``constant``: ``lr``.
    """
    w = o.warmup_epochs
    if epoch < w:
        return o.lr * (epoch + 1) / w
    if o.schedule == "step":
        return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "bcl_cosine":
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w + 1) / (total_epochs - w + 1)))
    if o.schedule == "cosine_restarts":
        t, period = epoch - w, o.restart_period
        while t >= period:  # skip the finished periods (a handful: they grow geometrically unless m = 1)
            t, period = t - period, period * o.restart_mult
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * t / period))
    if o.schedule == "cosine":
        span = max(total_epochs - w, 1)
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / span))
    return o.lr
