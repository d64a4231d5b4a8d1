"""Batch sources for large image-file datasets: a torch DataLoader with workers, PIL decoding and
per-image transforms, pinned memory and non-blocking copies. Same interface and :class:`Batch` as the
in-memory sources in :mod:`longtail.data.batches` (see its docstring for the resume and distributed rules).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from longtail.data.base import FileSplit
from longtail.data.batches import Batch, _check_batching, _check_start, _format, batch_bounds, num_steps
from longtail.data.samplers import Sampler, check_rank, mix_seed, shard_bounds
from longtail.errors import ConfigError, DataError

_mix_seed = mix_seed


@contextmanager
def _seeded(seed: Optional[int]) -> Iterator[None]:
    """Seed torch's and Python's global RNGs for one sample's transforms.

    torchvision's random transforms draw from the global torch RNG (some user transforms from
    ``random``). Inside a worker process those RNGs are private to the worker, so we just seed them. With
    ``num_workers=0`` they are the trainer's own CPU RNGs, so their state is saved and restored around the
    sample (costs a few microseconds).
    """
    if seed is None:
        yield
        return
    in_worker = torch.utils.data.get_worker_info() is not None
    saved = None if in_worker else (torch.get_rng_state(), random.getstate())
    # default_generator, not torch.manual_seed: the latter would also reseed the CUDA generators.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])


@dataclass
class _Unreadable:
    """Stands in for a sample (and then its batch) whose image could not be decoded.

    The error travels back as data and is raised by the batch source itself. Raised inside a worker,
    it would be re-raised inside the DataLoader iterator, and the traceback's reference cycle through
    that iterator delays its clean-up to the cycle collector, which then waits out a 5 s join timeout
    per worker and prints broken-pipe noise after the real message.
    """

    message: str


class _FileDataset(torch.utils.data.Dataset):
    """Map-style dataset keyed by ``(sample_seed or None, position)``: decode, then apply each transform."""

    def __init__(self, split: FileSplit, transforms: Sequence[Callable]) -> None:
        self.root = Path(split.root)
        self.paths = list(split.paths)
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[Optional[int], int]) -> Union[tuple[list[torch.Tensor], int, int], _Unreadable]:
        sample_seed, i = key
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # convert() decodes fully, so truncated files fail here
        except (OSError, ValueError) as e:  # missing, unreadable, not an image, truncated
            return _Unreadable(f"cannot read image {path}: {e}; restore or remove this file from the split's list")
        with _seeded(sample_seed):
            views = [t(img) for t in self.transforms]
        return views, int(self.labels[i]), i


def _collate(items: list) -> Union[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor], _Unreadable]:
    bad = [it for it in items if isinstance(it, _Unreadable)]
    if bad:
        return bad[0]
    views = [torch.stack([it[0][v] for it in items]) for v in range(len(items[0][0]))]
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return views, labels, index


def _iterate(loader: torch.utils.data.DataLoader, device: torch.device, channels_last: bool) -> Iterator[Batch]:
    for out in loader:
        if isinstance(out, _Unreadable):
            raise DataError(out.message)
        views, labels, index = out
        yield Batch(
            views=[_format(v.to(device, non_blocking=True), channels_last) for v in views],
            labels=labels.to(device, non_blocking=True),
            index=index.to(device, non_blocking=True),
        )


class _EpochBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of keys ``(sample_seed, position)``; ``set_epoch`` before each epoch.

    It lives in the main process (also with persistent workers), so ``set_epoch`` takes effect at the
    next ``iter(loader)``, as with torch's DistributedSampler.
    """

    def __init__(
        self, sampler: Sampler, batch_size: int, drop_last: bool, seed: int, rank: int, world_size: int
    ) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_step = 0, 0

    def steps(self) -> int:
        return num_steps(len(self.sampler), self.batch_size, drop_last=self.drop_last, world_size=self.world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        _check_start(start_step, self.steps())
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps() - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.sampler.epoch_indices(self.epoch).tolist()
        b = self.batch_size
        for step in range(self.start_step, self.steps()):
            # A sample's seed depends on its position in the global order, not on the rank or on which
            # worker decodes it: resuming, or changing num_workers, gives the same augmentation.
            start, stop = batch_bounds(step, b, len(order), self.world_size)
            lo, hi = shard_bounds(stop - start, self.rank, self.world_size)
            pos = range(start + lo, start + hi)
            yield [(mix_seed(self.seed, self.epoch, p), order[p]) for p in pos]


class _SequentialBatchSampler(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[None, int]]]:
        for s in range(self.start, self.stop, self.batch_size):
            yield [(None, i) for i in range(s, min(s + self.batch_size, self.stop))]


def _worker_init(worker_id: int) -> None:
    # Per-sample seeding makes the transforms reproducible; this only fixes the remaining global state
    # (numpy, random) from the worker's own torch seed, which the loader's seeded generator determines.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _make_loader(
    split: FileSplit, transforms: Sequence[Callable], batch_sampler, *, num_workers: int, pin: bool, seed: int
) -> torch.utils.data.DataLoader:
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0 (got {num_workers})")
    g = torch.Generator()
    g.manual_seed(mix_seed(seed))  # the workers' base seed; torch adds the worker id
    return torch.utils.data.DataLoader(
        _FileDataset(split, transforms),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=g,
        persistent_workers=num_workers > 0,
    )


class LoaderBatches:
    """Training batches of an image-file split through a DataLoader with workers.

    Args:
        split: the file split (``root / paths[i]`` has label ``labels[i]``).
        transforms: one callable ``PIL.Image -> Tensor [C, H, W]`` per view.
        batch_size: the global batch size.
        sampler: gives each epoch's global order.
        device: the training device.
        seed: the training seed (augmentation randomness).
        num_workers: DataLoader worker processes (0: decode in this process).
        drop_last: drop the last partial batch.
        channels_last: return views in channels_last memory format.
        rank, world_size: this process's share (see the module docstring).
        pin_memory: pin host batches; None (auto) pins when the device is CUDA.

    Each sample's transforms run after seeding torch and ``random`` with
    ``mix_seed(seed, epoch, position in the global order)``, so the augmentation does not depend on the
    worker count, the rank, or where training resumed.
    """

    def __init__(
        self,
        split: FileSplit,
        *,
        transforms: Sequence[Callable],
        batch_size: int,
        sampler: Sampler,
        device: Union[str, torch.device],
        seed: int,
        num_workers: int = 4,
        drop_last: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: Optional[bool] = None,
    ) -> None:
        _check_batching(batch_size, rank, world_size)
        if len(transforms) == 0:
            raise ValueError("LoaderBatches needs at least one transform (one per view)")
        if len(sampler.labels) != len(split.labels):
            raise ValueError(
                f"the sampler was built on {len(sampler.labels)} labels but the split has {len(split.labels)}"
            )
        self.device = torch.device(device)
        self.channels_last = channels_last
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._batches = _EpochBatchSampler(sampler, batch_size, drop_last, int(seed), rank, world_size)
        self._loader = _make_loader(split, transforms, self._batches, num_workers=num_workers, pin=pin, seed=int(seed))

    def __len__(self) -> int:
        return self._batches.steps()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from ``start_step`` on (for resume)."""
        self._batches.set_epoch(epoch, start_step)
        yield from _iterate(self._loader, self.device, self.channels_last)


class LoaderEvalBatches:
    """Sequential evaluation batches of an image-file split; each rank reads one contiguous chunk.

    Args:
        split: the file split.
        transform: the deterministic eval transform ``PIL.Image -> Tensor [C, H, W]``.
        batch_size: per-rank batch size.
        device: the device.
        num_workers: DataLoader worker processes.
        rank, world_size: this process's share (no padding: every image counts once).
        channels_last: return the view in channels_last memory format.
        pin_memory: None (auto) pins when the device is CUDA.
    """

    def __init__(
        self,
        split: FileSplit,
        *,
        transform: Callable,
        batch_size: int,
        device: Union[str, torch.device],
        num_workers: int = 4,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        pin_memory: Optional[bool] = None,
    ) -> None:
        check_rank(rank, world_size)
        if batch_size < 1:
            raise ConfigError(f"eval batch_size must be >= 1 (got {batch_size})")
        self.device = torch.device(device)
        self.channels_last = channels_last
        pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        start, stop = shard_bounds(len(split.labels), rank, world_size)
        self._batches = _SequentialBatchSampler(start, stop, batch_size)
        self._loader = _make_loader(split, [transform], self._batches, num_workers=num_workers, pin=pin, seed=0)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        return _iterate(self._loader, self.device, self.channels_last)
