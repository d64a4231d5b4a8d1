"""Reading a DLSA feature cache: ``features_{train,val,test}.h5`` plus ``features.json``.

A private reader on purpose: ``dlsa`` depends only on the file format (METHODS §4.2), not on the
extraction code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from longtail.errors import DataError


@dataclass
class FeatureSplit:
    """One split. Shape: features float32 [N, d], labels int64 [N]."""

    features: np.ndarray
    labels: np.ndarray


@dataclass
class FeatureCache:
    meta: dict
    num_classes: int
    class_counts: np.ndarray
    train: FeatureSplit
    test: FeatureSplit
    val: Optional[FeatureSplit]


def _read_split(path: Path) -> FeatureSplit:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "labels") if k not in f]
            if missing:
                raise DataError(f"{path} lacks the dataset(s) {', '.join(missing)}; "
                                f"re-extract the features (expected 'features' [N, d] and 'labels' [N])")
            feats = np.asarray(f["features"][...], dtype=np.float32)
            labels = np.asarray(f["labels"][...], dtype=np.int64)
    except OSError as e:
        raise DataError(f"cannot read {path} as HDF5 ({e}); re-extract the features") from None
    if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: 'features' must be [N, d] and 'labels' [N] with the same N "
                        f"(got {feats.shape} and {labels.shape})")
    if feats.shape[0] == 0:
        raise DataError(f"{path} holds no samples; re-extract the features for this split")
    return FeatureSplit(feats, labels)


def read_feature_cache(features_dir: str | Path) -> FeatureCache:
    """Read and validate a feature cache directory.

    Raises:
        DataError: a missing file, an empty split, mismatched feature dimensions, labels outside
            [0, num_classes) or class counts that disagree with the train labels.
    """
    root = Path(features_dir)
    meta_path = root / "features.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found; point features_dir at the output of `longtail extract`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path} is not valid JSON ({e})") from None
    for key in ("num_classes", "class_counts"):
        if key not in meta:
            raise DataError(f"{meta_path} lacks '{key}'; re-extract the features")
    num_classes = int(meta["num_classes"])
    counts = np.asarray(meta["class_counts"], dtype=np.int64)
    if counts.shape != (num_classes,):
        raise DataError(f"{meta_path}: class_counts has {counts.size} entries but num_classes is {num_classes}")
    splits: dict[str, Optional[FeatureSplit]] = {}
    for name in ("train", "val", "test"):
        path = root / f"features_{name}.h5"
        if not path.is_file():
            if name == "val":
                splits[name] = None
                continue
            raise DataError(f"{path} not found; the {name} split is required")
        splits[name] = _read_split(path)
    dim = splits["train"].features.shape[1]
    for name, sp in splits.items():
        if sp is None:
            continue
        if sp.features.shape[1] != dim:
            raise DataError(f"features_{name}.h5 has dimension {sp.features.shape[1]} but features_train.h5 "
                            f"has {dim}; all splits must come from the same extraction")
        lo, hi = int(sp.labels.min()), int(sp.labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"features_{name}.h5 has labels from {lo} to {hi}, outside [0, {num_classes}) "
                            f"(num_classes from features.json)")
    got = np.bincount(splits["train"].labels, minlength=num_classes)
    if not np.array_equal(got, counts):
        raise DataError(f"{meta_path}: class_counts disagree with the labels in features_train.h5 "
                        f"(first mismatch at class {int(np.flatnonzero(got != counts)[0])}); re-extract")
    return FeatureCache(meta, num_classes, counts, splits["train"], splits["test"], splits["val"])
