"""The embedded quickstart dataset: scikit-learn's bundled handwritten digits, made long-tailed.

The pinned recipe (no network, no files):

1. ``sklearn.datasets.load_digits()``: 1,797 grayscale 8x8 images with values 0..16, labels 0..9.
   Pixels become uint8 as ``round(v * 255 / 16)``.
2. Test set: for each class, the last 50 of its images in the bundled order (500 images, balanced).
3. Train pool: every other image (124 to 133 per class).
4. Long-tailed train split: the CIFAR-LT recipe (docs/protocol.md §2) with n_max = 120 and C = 10 over the
   pool, split seed 0: class i keeps ``int(120 * (1/rho) ** (i / 9))`` images.

At rho = 10 this gives 120 ... 12 images per class and all three shot groups (1 Many, 7 Medium, 2 Few),
so the quickstart's table shows every column.
"""

from __future__ import annotations

import numpy as np

from longtail.data.base import ArraySplit
from longtail.data.splits import lt_counts, select_lt_indices

N_MAX = 120
NUM_CLASSES = 10
TEST_PER_CLASS = 50
MEAN = (0.3053,)
STD = (0.3759,)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 [N, 8, 8, 1] and int64 labels, in the bundled order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int64)


def test_indices(labels: np.ndarray) -> np.ndarray:
    """Original indices of the balanced test set: the last 50 images of each class."""
    return np.concatenate([np.flatnonzero(labels == c)[-TEST_PER_CLASS:] for c in range(NUM_CLASSES)])


def digits_counts(imbalance: float, profile: str = "exp", step_fraction: float = 0.5) -> list[int]:
    return lt_counts(N_MAX, NUM_CLASSES, imbalance, profile, step_fraction)


def digits_train_indices(labels: np.ndarray, imbalance: float, profile: str = "exp",
                         step_fraction: float = 0.5, split_seed: int = 0) -> np.ndarray:
    """Original indices of the long-tailed train split (class order)."""
    pool_labels = labels.copy()
    pool_labels[test_indices(labels)] = -1  # test images never enter the pool
    return select_lt_indices(pool_labels, digits_counts(imbalance, profile, step_fraction), split_seed)


def load_digits_lt(imbalance: float, profile: str = "exp", step_fraction: float = 0.5,
                   split_seed: int = 0) -> tuple[ArraySplit, ArraySplit, np.ndarray]:
    """(train, test, train_indices) of the long-tailed digits benchmark."""
    images, labels = load_digits_arrays()
    tr = digits_train_indices(labels, imbalance, profile, step_fraction, split_seed)
    te = test_indices(labels)
    return ArraySplit(images[tr], labels[tr]), ArraySplit(images[te], labels[te]), tr
