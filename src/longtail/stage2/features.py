"""The feature cache, the one format that decoupled stage 2 and DLSA read: extraction, writing, reading.

One file per split, ``features_{split}.h5``, with datasets ``features`` (float32 [N, D]) and ``labels``
(int64 [N]), plus ``features.json`` describing the cache (class counts, source run, backbone, sizes).
Features are computed in float32 (no autocast) by the frozen backbone in eval mode on the
normalise-only evaluation view of each split (no augmentation), in the split's stored order, and
appended batch by batch, so nothing has to fit in memory at once. Users may bring their own features
in this format (:func:`write_features`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from longtail.data.download import file_digest
from longtail.errors import DataError, LongtailError
from longtail.fileio import atomic_write, atomic_write_json, refuse_overwrite

__all__ = ["SPLITS", "FeatureSplit", "FeatureCache", "extract_features", "write_features", "read_features",
           "read_info", "load_feature_splits", "read_feature_cache", "holdout_indices", "file_sha256"]

SPLITS = ("train", "val", "test")


class FeatureSplit(NamedTuple):
    """One split's features float32 [N, D] and labels int64 [N] (unpacks as ``x, y``)."""

    features: np.ndarray
    labels: np.ndarray


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (:func:`longtail.data.download.file_digest`)."""
    return file_digest(path, "sha256")


# ----------------------------------------------------------------------------------------------------
# writing


class _H5Appender:
    """Resizable, chunked ``features``/``labels`` datasets extended one batch at a time."""

    def __init__(self, f, dim: int, chunk: int) -> None:
        self.x = f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype="float32",
                                  chunks=(max(1, min(chunk, 4096)), dim))
        self.y = f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int64",
                                  chunks=(max(1, min(chunk, 65536)),))

    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        n0, n = self.x.shape[0], len(y)
        self.x.resize(n0 + n, axis=0)
        self.y.resize(n0 + n, axis=0)
        self.x[n0:] = x
        self.y[n0:] = y


def write_features(path: str | Path, features: np.ndarray, labels: np.ndarray, **attrs) -> Path:
    """Write one split's features in the cache format (for tests and users bringing their own features).

    Shape:
        features: float [N, D] (stored as float32); labels: int [N] (stored as int64).
    """
    import h5py

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"features must be [N, D] and labels [N] (got {x.shape} and {y.shape})")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            _H5Appender(f, x.shape[1], max(len(y), 1)).append(x, y)
            f.attrs.update(attrs)

    return atomic_write(path, write)


@torch.no_grad()
def extract_features(run_dir: str | Path, out_dir: str | Path, *, splits: Sequence[str] = ("train", "test"),
                     batch_size: int = 512, device: str = "auto", data_root: Optional[str] = None,
                     holdout_fraction: Optional[float] = None, holdout_seed: int = 0,
                     overwrite: bool = False) -> dict[str, Path]:
    """Extract the frozen backbone's features of ``run_dir`` for ``splits`` into ``out_dir``.

    A folder that already holds features (``features.json`` or a ``features_*.h5``) is refused unless
    ``overwrite``; then its feature files are replaced once the run has been loaded and checked.

    The train split is the long-tailed train split in its stored order. ``val`` exists only for
    datasets with a validation split (list datasets). With ``holdout_fraction`` and no val split,
    ``features.json`` also records the class-stratified train hold-out (:func:`holdout_indices`).

    Returns:
        split -> path of its ``features_{split}.h5``.
    """
    import h5py

    from longtail.data.pipeline import eval_batches
    from longtail.engine.devices import resolve_device
    from longtail.engine.run import load_run, split_imbalance
    from longtail.rundir import RunDir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for s in splits:
        if s not in SPLITS:
            raise LongtailError(f"unknown split '{s}'; choose from {', '.join(SPLITS)}")
    if batch_size < 1:
        raise LongtailError(f"batch_size must be >= 1 (got {batch_size})")
    rd = RunDir(run_dir)
    rd.require_config()
    if not rd.weights_path.is_file():
        raise LongtailError(f"{run_dir} has no model.safetensors: finish the run first (longtail train --resume "
                            f"{run_dir})")
    existing = _feature_files(out_dir)
    if existing and not overwrite:
        refuse_overwrite(existing[0], "features", overwrite)
    dev = resolve_device(device)
    cfg, pieces = load_run(run_dir, dev, [f"data.root={data_root}"] if data_root else [])
    ds, network = pieces.dataset, pieces.network
    for s in splits:
        if getattr(ds, s) is None:
            raise LongtailError(f"{ds.name} has no '{s}' split (only list datasets with data.val_list have one); "
                                f"extract train and test, and select on a train hold-out instead")
    weights_sha = file_sha256(rd.weights_path)
    for stale in existing:  # --overwrite: no file of the old extraction may outlive it
        stale.unlink(missing_ok=True)
    paths, sizes, dims = {}, {}, {}
    for s in splits:
        batches = eval_batches(cfg.data, ds, batch_size=batch_size, device=dev, split=getattr(ds, s))

        def write(tmp: Path, s: str = s, batches=batches) -> None:
            with h5py.File(tmp, "w") as f:
                ap = None
                for batch in batches:
                    h = network.forward_features(batch.views[0]).float()
                    if ap is None:
                        dims[s] = h.shape[1]
                        ap = _H5Appender(f, dims[s], batch_size)
                    ap.append(h.cpu().numpy(), batch.labels.cpu().numpy().astype(np.int64))
                if ap is None:
                    raise DataError(f"split '{s}' of {ds.name} is empty; nothing to extract")
                f.attrs.update({"source_run": str(run_dir.resolve()), "backbone": cfg.model.backbone, "split": s,
                                "transform": _describe_transform(batches), "model_sha256": weights_sha})
                sizes[s] = int(f["labels"].shape[0])

        paths[s] = atomic_write(out_dir / f"features_{s}.h5", write)
    info = {"source_run": str(run_dir.resolve()), "dataset": ds.name, "backbone": cfg.model.backbone,
            "head": cfg.model.head, "method": cfg.method.name, "num_classes": int(ds.num_classes),
            "class_counts": [int(c) for c in ds.train_counts], "class_names": list(ds.class_names),
            "feature_dim": int(next(iter(dims.values()))), "sizes": sizes, "has_val": ds.val is not None,
            "model_sha256": weights_sha, "holdout": None,
            # tags of the source run, so stage-2 and DLSA runs on these features are labelled like it
            "imbalance": split_imbalance(ds), "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
            "augment": cfg.data.augment, "seed": cfg.train.seed, "data_verified": bool(ds.verified and cfg.data.verify),
            "shot_rule": {"many_above": cfg.eval.many_above, "few_below": cfg.eval.few_below}}
    if holdout_fraction is not None and ds.val is None:
        _, val_idx = holdout_indices(ds.train.labels, holdout_fraction, holdout_seed)
        info["holdout"] = {"fraction": holdout_fraction, "seed": holdout_seed, "size": int(len(val_idx)),
                           "from": "train", "note": "stage 1 was trained on these images"}
    atomic_write_json(out_dir / "features.json", info)
    return paths


def _feature_files(folder: Path) -> list[Path]:
    """The feature files in ``folder``: ``features.json`` first, then every ``features_*.h5``."""
    if not folder.is_dir():
        return []
    return [p for p in [folder / "features.json"] if p.exists()] + sorted(folder.glob("features_*.h5"))


def _describe_transform(batches) -> str:
    view = getattr(batches, "view", None)
    if view is not None:
        return f"in-memory eval view: {view!r}"
    return f"file eval transform: {getattr(getattr(batches, '_loader', None), 'dataset', None)!r}"


def holdout_indices(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified hold-out from the TRAIN split (never the test set).

    Used to choose post-hoc parameters (τ-norm τ, post-hoc LA τ) on datasets without a validation
    split (CIFAR-LT, TinyImageNet-LT). Per class c with n_c images, ``floor(fraction·n_c + 0.5)`` images
    are held out, but at least 1 when n_c >= 2, at most n_c − 1, and none when n_c == 1 (so every class
    keeps a training image). They are drawn with ``numpy.random.default_rng(seed)``, one permutation per
    class in class order.

    Shape:
        labels: int [N] -> (train_idx int64 [N - M], val_idx int64 [M]), both ascending and disjoint.
    """
    if not 0 < fraction < 1:
        raise LongtailError(f"holdout fraction must be in (0, 1) (got {fraction}); 0.1 is the default")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        m = 0 if n < 2 else min(n - 1, max(1, int(math.floor(fraction * n + 0.5))))
        held.append(idx[rng.permutation(n)[:m]])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), val.astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# reading


def read_info(feature_dir: str | Path) -> dict:
    """The cache's ``features.json``."""
    p = Path(feature_dir) / "features.json"
    if not p.is_file():
        raise DataError(f"{p} not found: run 'longtail extract RUN_DIR --out {feature_dir}' first")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON ({e})") from None


def read_features(feature_dir: str | Path, split: str) -> FeatureSplit:
    """One split: (features float32 [N, D], labels int64 [N]), checked for shape."""
    import h5py

    p = Path(feature_dir) / f"features_{split}.h5"
    if not p.is_file():
        raise DataError(f"{p} not found: run 'longtail extract RUN_DIR --out {feature_dir}' to extract the "
                        f"'{split}' features (the {split} split is required)")
    try:
        with h5py.File(p, "r") as f:
            missing = [k for k in ("features", "labels") if k not in f]
            if missing:
                raise DataError(f"{p} lacks the dataset(s) {', '.join(missing)}; re-extract the features "
                                f"(expected 'features' [N, d] and 'labels' [N])")
            x = np.asarray(f["features"][...], dtype=np.float32)
            y = np.asarray(f["labels"][...], dtype=np.int64)
    except OSError as e:
        raise DataError(f"{p} is not a readable feature file ({e}); extract it again") from None
    if x.ndim != 2 or y.ndim != 1:
        raise DataError(f"{p}: 'features' must be [N, d] and 'labels' [N] (got {x.shape} and {y.shape})")
    return FeatureSplit(x, y)


def load_feature_splits(feature_dir: str | Path, splits: Sequence[str],
                        num_classes: Optional[int] = None) -> dict[str, FeatureSplit]:
    """Read and check several splits: non-empty, one feature size, labels in [0, num_classes)."""
    out: dict[str, FeatureSplit] = {}
    first = None
    for s in splits:
        x, y = read_features(feature_dir, s)
        if len(y) == 0 or x.shape[0] != len(y):
            raise DataError(f"split '{s}' in {feature_dir} is empty or its features and labels differ in length "
                            f"({x.shape[0]} vs {len(y)}): features_{s}.h5 holds no samples; extract it again")
        if first is not None and x.shape[1] != out[first][0].shape[1]:
            d0 = out[first][0].shape[1]
            raise DataError(f"feature size differs between splits: '{first}' has D={d0} but '{s}' has "
                            f"D={x.shape[1]} (features_{s}.h5 has dimension {x.shape[1]} but features_{first}.h5 "
                            f"has {d0}); extract all splits from the same run")
        if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DataError(f"split '{s}' has label {bad} outside [0, {num_classes}) (labels from {int(y.min())} "
                            f"to {int(y.max())}, outside [0, {num_classes})); the features do not belong to a "
                            f"{num_classes}-class dataset")
        first = first or s
        out[s] = FeatureSplit(x, y)
    return out


@dataclass
class FeatureCache:
    """A whole cache: its description, class counts and splits (``val`` is None without one)."""

    meta: dict
    num_classes: int
    class_counts: np.ndarray
    train: FeatureSplit
    test: FeatureSplit
    val: Optional[FeatureSplit] = None
    splits: dict = field(default_factory=dict)


def read_feature_cache(feature_dir: str | Path) -> FeatureCache:
    """Read and validate a whole cache (train, test and, when present, val).

    Raises:
        DataError: a missing file, an empty split, mismatched feature dimensions, labels outside
            [0, num_classes) or class counts that disagree with the train labels.
    """
    meta = read_info(feature_dir)
    for key in ("num_classes", "class_counts"):
        if key not in meta:
            raise DataError(f"{Path(feature_dir) / 'features.json'} lacks '{key}'; re-extract the features")
    num_classes = int(meta["num_classes"])
    counts = np.asarray(meta["class_counts"], dtype=np.int64)
    if counts.shape != (num_classes,):
        raise DataError(f"features.json: class_counts has {counts.size} entries but num_classes is {num_classes}")
    names = ["train", "test"] + (["val"] if (Path(feature_dir) / "features_val.h5").is_file() else [])
    splits = load_feature_splits(feature_dir, names, num_classes)
    got = np.bincount(splits["train"].labels, minlength=num_classes)
    if not np.array_equal(got, counts):
        raise DataError(f"features.json: class_counts disagree with the labels in features_train.h5 "
                        f"(first mismatch at class {int(np.flatnonzero(got != counts)[0])}); re-extract")
    return FeatureCache(meta, num_classes, counts, splits["train"], splits["test"], splits.get("val"), splits)
