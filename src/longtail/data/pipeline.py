"""From a dataset to batch sources: the training views and the evaluation batches.

The functions take what they use (the ``data`` section, a dataset, the view presets, sizes, the device and
this process's share) and return a batch source; they know nothing of methods or trainers.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from longtail.config import DataConfig
from longtail.data.base import ArraySplit, Dataset, Split
from longtail.errors import ConfigError

__all__ = ["view_settings", "train_batches", "eval_batches", "loader_workers"]


def loader_workers(data: DataConfig) -> int:
    """``data.num_workers``, else one DataLoader worker per usable CPU core, at most 8."""
    from longtail.engine.devices import usable_cores

    return int(data.num_workers) if data.num_workers is not None else min(8, usable_cores())


def view_settings(data: DataConfig, ds: Dataset) -> dict:
    """The settings of the view builders: the dataset's padding and flip unless the config sets them."""
    from longtail.registry import DATASETS

    entry = DATASETS.get(ds.name) if ds.name in DATASETS else None
    pad, flip = (entry.crop_padding, entry.flip) if entry is not None else (4, True)
    pad = ds.image_size // 8 if pad is None else pad
    return dict(image_size=ds.image_size, crop_padding=pad if data.crop_padding is None else data.crop_padding,
                flip=flip if data.flip is None else data.flip, cutout=data.cutout, randaugment_n=data.randaugment_n,
                randaugment_m=data.randaugment_m, randaugment_mstd=data.randaugment_mstd, mean=ds.mean, std=ds.std)


def train_batches(data: DataConfig, ds: Dataset, presets: Sequence[str], *, batch_size: int, seed: int,
                  epochs: int, device: torch.device, drop_last: bool = False, channels_last: bool = False,
                  rank: int = 0, world_size: int = 1):
    """The training batch source: one view per preset, from the device (small datasets) or a DataLoader.

    Args:
        data: the ``data`` section (sampler, source, workers, augmentation settings).
        ds: the dataset; its training split is sampled.
        presets: the augmentation preset of each view (a method's ``view_presets()``).
        batch_size: the global batch; seed: the training seed; epochs: for schedule-aware samplers.
        device, drop_last, channels_last, rank, world_size: see the batch sources.
    """
    from longtail.data.batches import InMemoryBatches
    from longtail.data.loader import LoaderBatches
    from longtail.data.samplers import build_sampler
    from longtail.data.views import build_torchvision_transform, build_view

    kw = view_settings(data, ds)
    sampler = build_sampler(data.sampler, ds.train.labels, seed=seed, k=data.sampler_k, total_epochs=epochs)
    source = data.source if data.source != "auto" else ("memory" if isinstance(ds.train, ArraySplit) else "loader")
    common = dict(batch_size=batch_size, sampler=sampler, device=device, seed=seed, channels_last=channels_last,
                  drop_last=drop_last, rank=rank, world_size=world_size)
    if source == "memory":
        if not isinstance(ds.train, ArraySplit):
            raise ConfigError(f"data.source=memory needs a small in-memory dataset; {ds.name} is read from files: "
                              f"use data.source=loader")
        built = {p: build_view(p, **kw) for p in dict.fromkeys(presets)}  # one object per preset: stacked
        return InMemoryBatches(ds.train.images, ds.train.labels, views=[built[p] for p in presets], **common)
    if isinstance(ds.train, ArraySplit):
        raise ConfigError("data.source=loader reads image files; this dataset is held in memory: use data.source=memory")
    tfs = [build_torchvision_transform(p, train=True, **_resize(ds), **kw) for p in presets]
    return LoaderBatches(ds.train, transforms=tfs, num_workers=loader_workers(data), **common)


def eval_batches(data: DataConfig, ds: Dataset, *, batch_size: int, device: torch.device,
                 split: Optional[Split] = None, rank: int = 0, world_size: int = 1):
    """Sequential, normalise-only batches of ``split`` (default: the test split), each image once."""
    from longtail.data.batches import EvalBatches
    from longtail.data.loader import LoaderEvalBatches
    from longtail.data.views import build_torchvision_transform, build_view

    split = ds.test if split is None else split
    kw = view_settings(data, ds)
    if isinstance(split, ArraySplit):
        return EvalBatches(split.images, split.labels, batch_size=batch_size, device=device,
                           view=build_view("none", **kw), rank=rank, world_size=world_size)
    tf = build_torchvision_transform("none", train=False, **_resize(ds), **kw)
    return LoaderEvalBatches(split, transform=tf, batch_size=batch_size, device=device,
                             num_workers=loader_workers(data), rank=rank, world_size=world_size)


def _resize(ds: Dataset) -> dict:
    """File datasets' evaluation geometry: resize the short side to 8/7 of the input size (256 for 224),
    then centre-crop the input size."""
    return dict(resize=round(ds.image_size * 256 / 224), center_crop=ds.image_size)


def with_split(ds: Dataset, split: Split) -> Dataset:
    """``ds`` with ``split`` as its test split (to evaluate or extract another split the same way)."""
    return dataclasses.replace(ds, test=split)
