"""Data: datasets and their long-tailed splits, samplers, augmentation, and the batch sources.

* :func:`build_dataset` reads a registered dataset (``DATASETS``: digits, cifar10, cifar100, tinyimagenet,
  imagenet_lt, places_lt, inat2018, and plugins) and applies its long-tailed split: a :class:`Dataset`.
* :func:`train_batches` / :func:`eval_batches` turn it into batch sources that yield :class:`Batch`
  (views, labels, index): :class:`InMemoryBatches` for small datasets held on the device, augmented with
  batched tensor ops; :class:`LoaderBatches` (a DataLoader with per-image transforms) for file datasets.
* :func:`build_sampler` gives the epoch order (instance, class_balanced, sqrt, progressive, plugins);
  :func:`build_view` the augmentation presets.
"""

from longtail.data.base import ArraySplit, Dataset, FileSplit
from longtail.data.batches import Batch, EvalBatches, InMemoryBatches
from longtail.data.build import build_dataset, split_counts, split_info
from longtail.data.datasets import DatasetEntry
from longtail.data.loader import LoaderBatches, LoaderEvalBatches
from longtail.data.pipeline import eval_batches, train_batches, view_settings
from longtail.data.samplers import (ClassBalancedSampler, InstanceSampler, ProgressiveSampler, Sampler,
                                    SquareRootSampler, build_sampler)
from longtail.data.splits import lt_counts, shot_summary
from longtail.data.views import build_torchvision_transform, build_view

__all__ = ["Dataset", "ArraySplit", "FileSplit", "DatasetEntry", "build_dataset", "split_counts", "split_info",
           "lt_counts", "shot_summary", "Batch", "InMemoryBatches", "EvalBatches", "LoaderBatches",
           "LoaderEvalBatches", "train_batches", "eval_batches", "view_settings", "Sampler", "InstanceSampler",
           "ClassBalancedSampler", "SquareRootSampler", "ProgressiveSampler", "build_sampler", "build_view",
           "build_torchvision_transform"]
