"""Build a :class:`Dataset` (long-tailed train split + test split) from a data config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longtail.config import DataConfig
from longtail.data.base import Dataset
from longtail.data.splits import check_stored_split, lt_counts, select_lt_indices, shot_summary
from longtail.errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the LDAM convention, used for CIFAR-10 and CIFAR-100 (docs/protocol.md §6)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

#: (n_max, num_classes) of the datasets whose long-tailed split the toolbox builds itself.
GENERATED = {"cifar10": (5000, 10), "cifar100": (500, 100), "tinyimagenet": (500, 200), "digits": (120, 10)}


def data_root(root: str | None) -> Path:
    """``data.root``, else ``$LONGTAIL_DATA``, else ``~/.cache/longtail``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("LONGTAIL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "longtail"


def cache_root() -> Path:
    """Where longtail keeps caches derived from data (never inside a dataset's folder): ``$LONGTAIL_CACHE``,
    else ``~/.cache/longtail``."""
    env = os.environ.get("LONGTAIL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "longtail"


def split_counts(name: str, imbalance: float, profile: str = "exp", step_fraction: float = 0.5) -> list[int]:
    """Per-class train counts of a generated long-tailed split, without touching any data."""
    if name not in GENERATED:
        raise ConfigError(f"'{name}' has no generated split; choose one of {', '.join(GENERATED)}")
    n_max, num_classes = GENERATED[name]
    return lt_counts(n_max, num_classes, imbalance, profile, step_fraction)


def split_info(name: str, imbalance: float, profile: str = "exp", step_fraction: float = 0.5) -> dict:
    """The per-class counts, total and shot groups of a generated split (``longtail data info``)."""
    counts = split_counts(name, imbalance, profile, step_fraction)
    return {"dataset": name, "imbalance": imbalance, "profile": profile, "counts": counts,
            "total": int(sum(counts)), "shots": shot_summary(counts)}


def split_indices(dcfg: DataConfig) -> np.ndarray:
    """Selected original train indices of a generated split (class order)."""
    name = dcfg.name
    if name == "tinyimagenet":
        # class-major base order, 500 per class: the split needs no files at all
        labels = np.repeat(np.arange(200), 500)
    elif name == "digits":
        from longtail.data.digits import digits_train_indices, load_digits_arrays

        _, labels = load_digits_arrays()
        return digits_train_indices(labels, dcfg.imbalance, dcfg.profile, dcfg.step_fraction, dcfg.split_seed)
    elif name in ("cifar10", "cifar100"):
        from longtail.data.cifar import load_cifar

        labels = load_cifar(name, data_root(dcfg.root), fmt=dcfg.format, download=dcfg.download,
                            verify=dcfg.verify).train.labels
    else:
        raise ConfigError(f"'{name}' has no generated split; its list files are the split")
    counts = split_counts(name, dcfg.imbalance, dcfg.profile, dcfg.step_fraction)
    idx = select_lt_indices(labels, counts, dcfg.split_seed)
    check_stored_split(name, dcfg.imbalance, dcfg.split_seed, dcfg.profile, idx)
    return idx


def build_dataset(dcfg: DataConfig) -> Dataset:
    """Read (or download) the data of ``dcfg.name`` (a registered dataset) and apply its long-tailed split."""
    from longtail.registry import DATASETS

    return DATASETS.get(dcfg.name).build(dcfg)
