"""Batch sources: what the trainer iterates over. Every source yields the same :class:`Batch`.

* :class:`InMemoryBatches` (small datasets: CIFAR, TinyImageNet, digits). The uint8 images live on the
  training device as one tensor; a batch is one index op plus the views' batched tensor ops. No
  DataLoader, no workers, no Python work per image (the airbench design).
* :class:`~longtail.data.loader.LoaderBatches` (large file datasets, in :mod:`longtail.data.loader`). A torch DataLoader with workers, PIL decoding and
  per-image transforms, pinned memory and non-blocking copies.
* :class:`EvalBatches` / :class:`LoaderEvalBatches`: sequential evaluation without augmentation.

Reproducibility and resume. The epoch order comes from the sampler, a function of ``(seed, epoch)``.
The augmentation randomness of every step (in memory) or every sample (loader) is seeded from the
integers that locate it, so ``epoch(e, start_step=s)`` rebuilds exactly the batches an uninterrupted run
produced from step s on, without replaying anything.

Distributed. ``batch_size`` is the *global* batch. Every rank computes the same global order, cuts it
into the same global batches and takes its contiguous share (:func:`~longtail.data.samplers.shard`):
concatenated in rank order the shares are the global batch, in order. The global batch size must be
divisible by the world size; a last partial batch is trimmed to a multiple of the world size (so every
rank's share has the same size, which the all-gathers of the contrastive losses and DDP's equal-weight
gradient average need), and dropped when smaller than the world size. Evaluation instead gives each rank one contiguous chunk of the split, without padding, so every image counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

from longtail.data.draws import batch_rows, stacked
from longtail.data.samplers import Sampler, check_rank, mix_seed, shard, shard_bounds
from longtail.errors import ConfigError

#: A view: ``view(x uint8 [B, H, W, C] on the device, g) -> float32 [B, C, H, W]`` normalised. A view
#: draws its randomness from ``g`` through ``longtail.data.augment``'s ``rand`` / ``randint`` / ``randn``
#: (every built-in op does), so that under DDP each rank gets its rows of the global batch's draw.
View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
ArrayLike = Union[np.ndarray, torch.Tensor]

_mix_seed = mix_seed  # one seed hash for samplers and batch sources
_EVAL_SEED = 0  # eval views are deterministic; they get a fixed generator only to honour the view contract


@dataclass
class Batch:
    """One (per-rank) training or evaluation batch.

    Shape:
        views: each float32 [B, C, H, W], normalised, on the device; labels: int64 [B];
        index: int64 [B], positions of the samples in the split they come from.
    """

    views: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor


def batch_bounds(step: int, batch_size: int, total: int, world_size: int = 1) -> tuple[int, int]:
    """Positions ``[start, stop)`` of global batch ``step`` in the epoch order; a last partial batch is
    trimmed to a multiple of ``world_size`` (one process: nothing is trimmed)."""
    start = step * batch_size
    stop = min(start + batch_size, total)
    return start, stop - (stop - start) % world_size


def num_steps(total: int, batch_size: int, *, drop_last: bool, world_size: int = 1) -> int:
    """Global batches in an epoch of ``total`` samples (see the module docstring for the DDP rule)."""
    full, rest = divmod(total, batch_size)
    return full + int(rest > 0 and not drop_last and rest >= world_size)


def _check_batching(batch_size: int, rank: int, world_size: int) -> None:
    check_rank(rank, world_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    if batch_size % world_size:
        raise ConfigError(
            f"the global batch size {batch_size} is not divisible by the world size {world_size}; "
            f"choose train.batch_size as a multiple of {world_size}"
        )


def _check_start(start_step: int, steps: int) -> None:
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step must be in [0, {steps}] for an epoch of {steps} steps (got {start_step})")


def _as_images(images: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(images)
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)).to(torch.int64)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C] (got {x.dtype} with shape {tuple(x.shape)})")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels must be 1-D with one label per image (got {tuple(y.shape)} for {len(x)} images)")
    return x, y




def _format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ----------------------------------------------------------------------------------------------------
# in memory


class InMemoryBatches:
    """Training batches from a uint8 image tensor held on the device.

    Args:
        images: uint8 [N, H, W, C]; copied to ``device`` once.
        labels: int [N].
        views: the view callables; each batch holds one output per view, in this order.
        batch_size: the global batch size.
        sampler: gives each epoch's global order; built on the same labels.
        device: the training device.
        seed: the training seed (augmentation randomness).
        drop_last: drop the last partial batch.
        channels_last: return views in channels_last memory format.
        rank, world_size: this process's share (see the module docstring).

    Each step's augmentation uses one generator on the device seeded with ``mix_seed(seed, epoch, step, 0)``,
    drawn from by the views in order. Views given as the same object (e.g. BCL's two SimCLR views) are
    augmented together, as one stacked batch of ``k * B`` images (:func:`~longtail.data.draws.stacked`):
    one set of kernel launches instead of ``k``, each copy with its own random draws; they draw at the
    place of their first occurrence. Under DDP every rank seeds the generator the same way and draws for
    the whole global batch, keeping the rows of its own share (:func:`~longtail.data.draws.batch_rows`):
    each image gets the augmentation a single process gives it, whatever the number of processes.
    """

    def __init__(
        self,
        images: ArrayLike,
        labels: ArrayLike,
        *,
        views: Sequence[View],
        batch_size: int,
        sampler: Sampler,
        device: Union[str, torch.device],
        seed: int,
        drop_last: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        x, y = _as_images(images, labels)
        _check_batching(batch_size, rank, world_size)
        if len(views) == 0:
            raise ValueError("InMemoryBatches needs at least one view")
        if len(sampler.labels) != len(y):
            raise ValueError(f"the sampler was built on {len(sampler.labels)} labels but there are {len(y)} images")
        self.device = torch.device(device)
        self.images = x.to(self.device)  # the one host-to-device copy of the dataset
        self.labels = y.to(self.device)
        self.views = list(views)
        # identical view objects -> one stacked call: [(view, positions in self.views)] in first-use order
        self._groups: list[tuple[View, list[int]]] = []
        for i, v in enumerate(self.views):
            for view, positions in self._groups:
                if view is v:
                    positions.append(i)
                    break
            else:
                self._groups.append((v, [i]))
        self.batch_size, self.sampler, self.seed = batch_size, sampler, int(seed)
        self.drop_last, self.channels_last = drop_last, channels_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return num_steps(len(self.sampler), self.batch_size, drop_last=self.drop_last, world_size=self.world_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from ``start_step`` on (for resume)."""
        steps = len(self)
        _check_start(start_step, steps)
        order = self.sampler.epoch_indices(epoch).to(self.device)
        g = torch.Generator(device=self.device)  # reseeded each step: any step is reproducible alone
        for step in range(start_step, steps):
            start, stop = batch_bounds(step, self.batch_size, len(order), self.world_size)
            idx = shard(order[start:stop], self.rank, self.world_size)
            x = self.images[idx]  # one gather on the device
            g.manual_seed(_mix_seed(self.seed, epoch, step, 0))  # rank-free: see the class docstring
            offset, _ = shard_bounds(stop - start, self.rank, self.world_size)
            views: list = [None] * len(self.views)
            with batch_rows(offset, stop - start):  # one process: offset 0 of its own batch
                for view, positions in self._groups:
                    k = len(positions)
                    if k == 1:
                        outs = (view(x, g),)
                    else:
                        with stacked(k):
                            outs = view(x.repeat(k, 1, 1, 1), g).chunk(k)
                    for i, out in zip(positions, outs):
                        views[i] = _format(out, self.channels_last)
            yield Batch(views=views, labels=self.labels[idx], index=idx)


class EvalBatches:
    """Sequential evaluation batches of an in-memory split, no augmentation.

    With ``world_size > 1`` each rank takes one contiguous chunk (sizes differ by at most one), so the
    union over ranks is the split and every image counts exactly once.

    Args:
        images: uint8 [N, H, W, C]; this rank's chunk is copied to ``device`` once.
        labels: int [N].
        batch_size: per-rank batch size.
        device: the device.
        view: the normalise-only view; called as ``view(x, g)`` with a fixed-seed generator.
        rank, world_size: this process's share.
        channels_last: return the view in channels_last memory format.
    """

    def __init__(
        self,
        images: ArrayLike,
        labels: ArrayLike,
        *,
        batch_size: int,
        device: Union[str, torch.device],
        view: View,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        x, y = _as_images(images, labels)
        check_rank(rank, world_size)
        if batch_size < 1:
            raise ConfigError(f"eval batch_size must be >= 1 (got {batch_size})")
        self.device = torch.device(device)
        start, stop = shard_bounds(len(y), rank, world_size)  # sizes differ by at most one, no padding
        self.images = x[start:stop].to(self.device)
        self.labels = y[start:stop].to(self.device)
        self.index = torch.arange(start, stop, device=self.device)
        self.batch_size, self.view, self.channels_last = batch_size, view, channels_last

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator(device=self.device)
        for s in range(0, len(self.labels), self.batch_size):
            g.manual_seed(_EVAL_SEED)
            sl = slice(s, s + self.batch_size)
            x = _format(self.view(self.images[sl], g), self.channels_last)
            yield Batch(views=[x], labels=self.labels[sl], index=self.index[sl])
