"""The dataset registry: every ``data.name`` with its reader, its augmentation defaults and its checks.

A registry entry (:class:`DatasetEntry`) builds a :class:`~longtail.data.base.Dataset` (the long-tailed
training split plus the evaluation splits) from the ``data`` config section. A plugin registers its own
with ``DATASETS.register(name, DatasetEntry(name, build=...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from longtail.config import DataConfig
from longtail.data.base import ArraySplit, Dataset
from longtail.data.build import (CIFAR_MEAN, CIFAR_STD, GENERATED, IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD,
                                 data_root, split_counts)
from longtail.data.splits import check_stored_split, select_lt_indices
from longtail.errors import ConfigError
from longtail.registry import DATASETS

__all__ = ["DatasetEntry", "DATASETS"]


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset as the toolbox knows it.

    Attributes:
        name: its ``data.name``.
        build: ``build(data_cfg) -> Dataset``.
        crop_padding, flip: augmentation defaults (``data.crop_padding`` / ``data.flip`` when null);
            ``crop_padding=None``: an eighth of the image size (4 at 32 px, as CIFAR's).
        check: optional ``check(data_cfg)`` raising ConfigError (e.g. missing list files).
    """

    name: str
    build: Callable[[DataConfig], Dataset]
    crop_padding: Optional[int] = 4
    flip: bool = True
    check: Optional[Callable[[DataConfig], None]] = None


def _native_size(dcfg: DataConfig, size: int) -> int:
    """The image size of a dataset held at its own resolution; ``data.image_size`` may only repeat it."""
    if dcfg.image_size is not None and dcfg.image_size != size:
        raise ConfigError(f"data.image_size={dcfg.image_size} but {dcfg.name} images are {size}x{size} and are not "
                          f"resized; leave data.image_size unset (it applies to folder and list-file datasets)")
    return size


def _digits(dcfg: DataConfig) -> Dataset:
    from longtail.data.digits import MEAN, STD, load_digits_lt

    train, test, idx = load_digits_lt(dcfg.imbalance, dcfg.profile, dcfg.step_fraction, dcfg.split_seed)
    check_stored_split("digits", dcfg.imbalance, dcfg.split_seed, dcfg.profile, idx)
    return Dataset("digits", 10, [str(i) for i in range(10)], train, test, train_indices=idx, mean=MEAN, std=STD,
                   image_size=_native_size(dcfg, 8), in_channels=1, imbalance=dcfg.imbalance)


def _cifar(dcfg: DataConfig) -> Dataset:
    from longtail.data.cifar import load_cifar

    name = dcfg.name
    data = load_cifar(name, data_root(dcfg.root), fmt=dcfg.format, download=dcfg.download, verify=dcfg.verify)
    counts = split_counts(name, dcfg.imbalance, dcfg.profile, dcfg.step_fraction)
    idx = select_lt_indices(data.train.labels, counts, dcfg.split_seed)
    check_stored_split(name, dcfg.imbalance, dcfg.split_seed, dcfg.profile, idx)
    train = ArraySplit(data.train.images[idx], data.train.labels[idx])
    return Dataset(name, GENERATED[name][1], list(data.class_names), train, data.test, train_indices=idx,
                   mean=CIFAR_MEAN, std=CIFAR_STD, image_size=_native_size(dcfg, 32), verified=data.verified,
                   imbalance=dcfg.imbalance)


def _tinyimagenet(dcfg: DataConfig) -> Dataset:
    from longtail.data.tinyimagenet import load_tinyimagenet

    data = load_tinyimagenet(data_root(dcfg.root), dcfg.imbalance, profile=dcfg.profile,
                             step_fraction=dcfg.step_fraction, split_seed=dcfg.split_seed,
                             download=dcfg.download, verify=dcfg.verify)
    check_stored_split("tinyimagenet", dcfg.imbalance, dcfg.split_seed, dcfg.profile, data.train_indices)
    return Dataset("tinyimagenet", 200, list(data.class_names), data.train, data.test,
                   train_indices=data.train_indices, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   image_size=_native_size(dcfg, 64), verified=dcfg.verify, imbalance=dcfg.imbalance)


def _list_path(path: str, root: Path) -> Path:
    """A relative list path is looked for under the data root first, then in the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute() and (root / p).is_file():
        return root / p
    return p


def _list_files(dcfg: DataConfig) -> Dataset:
    from longtail.data.imagecheck import check_images
    from longtail.data.listfile import check_disjoint, read_list_file
    from longtail.data.pipeline import loader_workers

    root = data_root(dcfg.root)
    kw = dict(num_classes=dcfg.num_classes, path_prefix=dcfg.path_prefix)
    lists = {"train": _list_path(dcfg.train_list, root), "test": _list_path(dcfg.test_list, root)}
    if dcfg.val_list:
        lists["val"] = _list_path(dcfg.val_list, root)
    splits = {name: read_list_file(path, root, **kw) for name, path in lists.items()}
    train, test, val = splits["train"], splits["test"], splits.get("val")
    if val is not None and dcfg.name in ("imagenet_lt", "places_lt"):
        check_disjoint(train, val)
    if dcfg.check_images:  # every image decodes, before anything is trained (cached per file)
        for name in ("train", "val", "test"):
            if name in splits:
                check_images(splits[name], list_path=lists[name], workers=loader_workers(dcfg))
    num_classes = dcfg.num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    mean, std = (INAT_MEAN, INAT_STD) if dcfg.name == "inat2018" else (IMAGENET_MEAN, IMAGENET_STD)
    return Dataset(dcfg.name, num_classes, [str(i) for i in range(num_classes)], train, test, val=val,
                   mean=mean, std=std, image_size=dcfg.image_size or 224, verified=dcfg.verify)


def _needs_lists(dcfg: DataConfig) -> None:
    if dcfg.train_list is None or dcfg.test_list is None:
        raise ConfigError(f"data.name={dcfg.name} reads list files: set data.train_list and data.test_list "
                          f"(lines 'path label')")


def _folder(dcfg: DataConfig) -> Dataset:
    from longtail.data.folder import build_folder

    return build_folder(dcfg)


DATASETS.register("digits", DatasetEntry("digits", _digits, crop_padding=1, flip=False))
DATASETS.register("folder", DatasetEntry("folder", _folder, crop_padding=None))
DATASETS.register("cifar10", DatasetEntry("cifar10", _cifar))
DATASETS.register("cifar100", DatasetEntry("cifar100", _cifar))
DATASETS.register("tinyimagenet", DatasetEntry("tinyimagenet", _tinyimagenet, crop_padding=8))
for _name in ("imagenet_lt", "places_lt", "inat2018"):
    DATASETS.register(_name, DatasetEntry(_name, _list_files, check=_needs_lists))
