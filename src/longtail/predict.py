"""Predictions of a trained run on image files: ``longtail predict RUN_DIR PATH...``.

The images go through the run's own evaluation preprocessing: for runs held in memory (CIFAR, Tiny,
small image folders) each image is decoded to RGB (grayscale for one-channel runs), resized to the run's
input size and normalised with its statistics, as the test split was; for file datasets the run's
evaluation transform (resize, centre crop, normalise) is applied. Post-hoc logit adjustment
(``eval.posthoc_tau``) is applied when the run uses it. The run's ``summary.json`` records the input
settings, so no training data is needed; older runs without that record rebuild their dataset.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from longtail.errors import DataError, LongtailError

__all__ = ["collect_images", "predict", "predictions_csv"]

MAX_SHOWN = 5


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively (image extensions
    only, sorted). Raises DataError for a missing path or when nothing is found."""
    from longtail.data.folder import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(Path(d) / f for d, _, files in os.walk(p) for f in files
                           if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise DataError(f"{p} holds no image files (extensions: {' '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p} does not exist; pass image files or folders of images")
    return out


def _input_settings(rd, cfg, device) -> dict:
    """The run's input record (``summary.json``), or one rebuilt from its dataset for older runs."""
    summary = rd.read_summary() or {}
    info = summary.get("input")
    if isinstance(info, dict) and {"image_size", "mean", "std", "in_channels", "source"} <= set(info):
        return {**info, "class_names": summary.get("class_names"), "train_counts": summary.get("train_counts")}
    from longtail.data.base import ArraySplit
    from longtail.data.build import build_dataset

    ds = build_dataset(cfg.data)
    return {"image_size": ds.image_size, "mean": list(ds.mean), "std": list(ds.std), "in_channels": ds.in_channels,
            "source": "memory" if isinstance(ds.train, ArraySplit) else "loader", "name": ds.name,
            "class_names": list(ds.class_names), "train_counts": [int(c) for c in ds.train_counts]}


def _stand_in(info: dict, dataset_name: str, split):
    """A :class:`Dataset` carrying only what the evaluation preprocessing reads, with ``split`` as its test."""
    from longtail.data.base import ArraySplit, Dataset

    n = len(info["train_counts"])
    empty = ArraySplit(np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64))
    return Dataset(dataset_name, n, list(info["class_names"]), empty, split, mean=tuple(info["mean"]),
                   std=tuple(info["std"]), image_size=int(info["image_size"]), in_channels=int(info["in_channels"]))


def _load_pixels(files: Sequence[Path], size: int, channels: int) -> np.ndarray:
    from longtail.data.folder import load_image

    images, bad = [], []
    for f in files:
        try:
            img = load_image(f, size)
        except DataError as e:
            bad.append(str(e))
            continue
        if channels == 1:  # ITU-R 601 luma, as Pillow's "L" conversion
            img = np.round(img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8)
        images.append(img)
    if bad:
        raise DataError(f"{len(bad)} of {len(files)} files cannot be decoded: {'; '.join(bad[:MAX_SHOWN])}")
    return np.stack(images)


@torch.no_grad()
def predict(run_dir: str | Path, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 256,
            device: str = "auto") -> list[dict]:
    """Top-``top_k`` classes of every image in ``paths`` (files or folders) under the run's final weights.

    Returns:
        one dict per image, in input order: ``path``, and ``top`` = a list of (class index, class name,
        probability) from the most to the least likely.
    """
    from longtail import config as C
    from longtail.data.base import ArraySplit, FileSplit
    from longtail.data.pipeline import eval_batches
    from longtail.engine.checkpoint import check_shapes
    from longtail.engine.devices import resolve_device
    from longtail.losses import posthoc_adjust
    from longtail.methods import create_method
    from longtail.rundir import RunDir

    rd = RunDir(run_dir)
    cfg = C.load(rd.require_config())
    summary = rd.read_summary() or {}
    if summary.get("kind") == "dlsa":
        raise LongtailError(f"{rd.path} is a DLSA run: it classifies cached features, not images; predict with "
                            f"the run its features came from")
    if not rd.weights_path.is_file() and not rd.checkpoint_path.is_file():
        raise LongtailError(f"{rd.path} has no weights (model.safetensors): finish the run first")
    files = collect_images(paths)
    dev = resolve_device(device)
    info = _input_settings(rd, cfg, dev)
    counts = np.asarray(info["train_counts"], dtype=np.int64)
    method = create_method(cfg, counts).to(dev)
    network = method.build_network(len(counts), int(info["in_channels"]))
    sd = rd.load_weights()
    check_shapes(network, sd, rd.weights_path)
    network.load_state_dict(sd)
    network.to(dev).eval()
    if info["source"] == "memory":
        x = _load_pixels(files, int(info["image_size"]), int(info["in_channels"]))
        split = ArraySplit(x, np.zeros(len(files), np.int64))
    else:
        for f in files:  # a clear error before any batch is decoded
            _load_pixels([f], 8, 3)
        split = FileSplit(root=Path("/"), paths=[str(f.resolve()) for f in files],
                          labels=np.zeros(len(files), np.int64))
    ds = _stand_in(info, cfg.data.name, split)
    k = min(int(top_k), len(counts))
    names = list(info["class_names"] or [str(i) for i in range(len(counts))])
    prior = torch.as_tensor(counts, dtype=torch.float32, device=dev)
    probs_all = []
    for batch in eval_batches(cfg.data, ds, batch_size=batch_size, device=dev):
        logits = method.inference_logits(network(batch.views[0])).float()
        if cfg.eval.posthoc_tau > 0:
            logits = posthoc_adjust(logits, prior, cfg.eval.posthoc_tau)
        probs_all.append(torch.softmax(logits, dim=1).cpu())
    probs = torch.cat(probs_all)
    p, idx = probs.topk(k, dim=1)
    return [{"path": str(f), "top": [(int(c), names[int(c)], float(q)) for c, q in zip(idx[i], p[i])]}
            for i, f in enumerate(files)]


def predictions_csv(rows: Sequence[dict], digits: int = 6) -> str:
    """CSV text, one line per image and rank: ``path,rank,class,name,probability``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "rank", "class", "name", "probability"])
    for r in rows:
        for rank, (c, name, q) in enumerate(r["top"], start=1):
            w.writerow([r["path"], rank, c, name, f"{q:.{digits}f}"])
    return buf.getvalue()
