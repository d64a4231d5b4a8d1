"""Build a :class:`Dataset` (long-tailed train split + test split) from a data config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longtail.config import DataConfig
from longtail.data.base import ArraySplit, Dataset
from longtail.data.splits import check_stored_split, lt_counts, select_lt_indices, shot_summary
from longtail.errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the LDAM convention, used for CIFAR-10 and CIFAR-100 (PROTOCOL §6)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

#: (n_max, num_classes) of the datasets whose long-tailed split the toolbox builds itself.
GENERATED = {"cifar10": (5000, 10), "cifar100": (500, 100), "tinyimagenet": (500, 200), "digits": (120, 10)}
#: default crop padding and flip per dataset
AUG_DEFAULTS = {"digits": (1, False), "cifar10": (4, True), "cifar100": (4, True), "tinyimagenet": (8, True)}


def data_root(root: str | None) -> Path:
    """``data.root``, else ``$LONGTAIL_DATA``, else ``~/.cache/longtail``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("LONGTAIL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "longtail"


def split_counts(name: str, imbalance: float, profile: str = "exp", step_fraction: float = 0.5) -> list[int]:
    """Per-class train counts of a generated long-tailed split, without touching any data."""
    if name not in GENERATED:
        raise ConfigError(f"'{name}' has no generated split; choose one of {', '.join(GENERATED)}")
    n_max, num_classes = GENERATED[name]
    return lt_counts(n_max, num_classes, imbalance, profile, step_fraction)


def split_info(name: str, imbalance: float, profile: str = "exp", step_fraction: float = 0.5) -> dict:
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
    """Read (or download) the data and apply the long-tailed split of the config."""
    name = dcfg.name
    if name == "digits":
        from longtail.data.digits import MEAN, STD, load_digits_lt

        train, test, idx = load_digits_lt(dcfg.imbalance, dcfg.profile, dcfg.step_fraction, dcfg.split_seed)
        check_stored_split(name, dcfg.imbalance, dcfg.split_seed, dcfg.profile, idx)
        return Dataset(name, 10, [str(i) for i in range(10)], train, test, train_indices=idx, mean=MEAN, std=STD,
                       image_size=8, in_channels=1)
    if name in ("cifar10", "cifar100"):
        from longtail.data.cifar import load_cifar

        data = load_cifar(name, data_root(dcfg.root), fmt=dcfg.format, download=dcfg.download, verify=dcfg.verify)
        counts = split_counts(name, dcfg.imbalance, dcfg.profile, dcfg.step_fraction)
        idx = select_lt_indices(data.train.labels, counts, dcfg.split_seed)
        check_stored_split(name, dcfg.imbalance, dcfg.split_seed, dcfg.profile, idx)
        train = ArraySplit(data.train.images[idx], data.train.labels[idx])
        return Dataset(name, GENERATED[name][1], list(data.class_names), train, data.test, train_indices=idx,
                       mean=CIFAR_MEAN, std=CIFAR_STD, image_size=32, verified=data.verified,
                       info={"format": data.fmt})
    if name == "tinyimagenet":
        from longtail.data.tinyimagenet import load_tinyimagenet

        data = load_tinyimagenet(data_root(dcfg.root), dcfg.imbalance, profile=dcfg.profile,
                                 step_fraction=dcfg.step_fraction, split_seed=dcfg.split_seed,
                                 download=dcfg.download, verify=dcfg.verify)
        check_stored_split(name, dcfg.imbalance, dcfg.split_seed, dcfg.profile, data.train_indices)
        return Dataset(name, 200, list(data.class_names), data.train, data.test, train_indices=data.train_indices,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=64, verified=dcfg.verify)
    return _build_list_dataset(dcfg)


def _list_path(path: str, root: Path) -> Path:
    """A relative list path is looked for under the data root first, then in the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute() and (root / p).is_file():
        return root / p
    return p


def _build_list_dataset(dcfg: DataConfig) -> Dataset:
    from longtail.data.listfile import check_disjoint, read_list_file

    root = data_root(dcfg.root)
    kw = dict(num_classes=dcfg.num_classes, path_prefix=dcfg.path_prefix)
    train = read_list_file(_list_path(dcfg.train_list, root), root, **kw)
    test = read_list_file(_list_path(dcfg.test_list, root), root, **kw)
    val = read_list_file(_list_path(dcfg.val_list, root), root, **kw) if dcfg.val_list else None
    if val is not None and dcfg.name in ("imagenet_lt", "places_lt"):
        check_disjoint(train, val)
    num_classes = dcfg.num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    mean, std = (INAT_MEAN, INAT_STD) if dcfg.name == "inat2018" else (IMAGENET_MEAN, IMAGENET_STD)
    return Dataset(dcfg.name, num_classes, [str(i) for i in range(num_classes)], train, test, val=val,
                   mean=mean, std=std, image_size=224, verified=dcfg.verify)
