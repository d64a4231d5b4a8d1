"""Plain containers shared by the dataset readers and the batch sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np


@dataclass
class ArraySplit:
    """A small split held in memory.

    Shape:
        images: uint8 [N, H, W, C]; labels: int64 [N].
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FileSplit:
    """A split of image files: ``root / paths[i]`` has label ``labels[i]``."""

    root: Path
    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


Split = Union[ArraySplit, FileSplit]


@dataclass
class Dataset:
    """A long-tailed training split plus its evaluation splits.

    ``train_indices`` are the original indices of the kept training images (class order), or None for
    list-file datasets whose lists already are the long-tailed split. ``imbalance`` is the imbalance
    factor the toolbox built the split with, or None when the data brings its own split (list files, an
    image folder used as it is): the measured factor then describes it.
    """

    name: str
    num_classes: int
    class_names: list[str]
    train: Split
    test: Split
    val: Optional[Split] = None
    train_indices: Optional[np.ndarray] = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_size: int = 32
    in_channels: int = 3
    verified: bool = True
    imbalance: Optional[float] = None

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(np.asarray(self.train.labels, dtype=np.int64), minlength=self.num_classes)
