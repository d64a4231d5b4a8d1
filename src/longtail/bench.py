"""Training throughput of longtail's pipeline against a per-image PIL/torchvision DataLoader pipeline.

Both pipelines train the same network (the reference gets a ``copy.deepcopy`` of the freshly built
network before any step, so both start from the same weights) with the same method, loss and batch
size, and differ only where the toolbox differs from the papers' code:

* **ours**: the configured batch source (uint8 images on the device, batched augmentation) and the
  trainer's own step (:meth:`~longtail.engine.trainer.Trainer.train_step`: its optimiser, fused on CUDA and CPU
  by default, and its on-device NaN guard and statistics), with the config's ``train.amp``,
  ``train.channels_last`` and ``train.compile``.
* **reference**: a map-style dataset that turns each uint8 image into a PIL image and runs the
  torchvision transforms of every view of the method (``build_torchvision_transform``), a shuffling
  ``DataLoader`` with ``workers`` worker processes (default: one per CPU core the process may use) and
  pinned memory, non-blocking copies of images and labels, fp32, no compile, contiguous memory format,
  and ``torch.optim.SGD`` with torch's default implementation.

Both run in one process under the training's global settings (``seed_everything``: cuDNN autotuning
on CUDA, as in ``longtail train``), so neither gets an advantage the other lacks.

Timed rounds alternate between the two pipelines, so both see the same machine state (clock boost,
thermal state, other load). Only in-memory datasets (CIFAR, Tiny ImageNet, digits) are supported:
for list-file datasets both pipelines would read files with a DataLoader and there is nothing to compare.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from longtail import config as C
from longtail.data.base import ArraySplit
from longtail.data.batches import Batch
from longtail.errors import LongtailError

#: Datasets held in memory as uint8 arrays; the only ones the benchmark can compare.
IN_MEMORY = ("cifar10", "cifar100", "tinyimagenet", "digits")
ROUNDS = 3  # timed rounds per pipeline (fewer when there are fewer steps)


class _PILViews(torch.utils.data.Dataset):
    """The reference dataset: one PIL image and one transform call per view per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transforms: Sequence[Callable]) -> None:
        self.images, self.labels, self.transforms = images, labels, list(transforms)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)  # grey images: mode L
        return [tf(pil) for tf in self.transforms], int(self.labels[i]), i


def _collate(items: list) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    views = [torch.stack([it[0][v] for it in items]) for v in range(len(items[0][0]))]
    return views, torch.tensor([it[1] for it in items]), torch.tensor([it[2] for it in items])


def _ours_batches(source) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from source.epoch(epoch)
        epoch += 1


def _reference_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[Batch]:
    while True:
        for views, labels, index in loader:
            yield Batch(views=[v.to(device, non_blocking=True) for v in views],
                        labels=labels.to(device, non_blocking=True), index=index.to(device, non_blocking=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ReferenceStep:
    """The papers' training step: fp32, torch's default SGD, nothing else."""

    def __init__(self, network, method, cfg: C.Config) -> None:
        o = cfg.optim
        self.network, self.method = network, method
        self.optimizer = torch.optim.SGD(network.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=o.weight_decay)

    def __call__(self, batch: Batch, step: int) -> None:
        output = self.method.forward_batch(self.network, batch)
        loss, _ = self.method.loss(batch, output)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class _Pipeline:
    """One training step function + batch stream; ``run(n)`` does n optimiser steps."""

    def __init__(self, network, step_fn: Callable[[Batch, int], None], batches: Iterator[Batch],
                 device: torch.device) -> None:
        self.network, self.step_fn, self.batches, self.device = network, step_fn, batches, device
        self.seconds, self.images, self.steps = 0.0, 0, 0

    def run(self, steps: int, timed: bool) -> None:
        self.network.train()
        _sync(self.device)
        t0 = time.perf_counter()
        n = 0
        for _ in range(steps):
            batch = next(self.batches)  # data time counts: it is half of what is compared
            self.step_fn(batch, self.steps)
            self.steps += 1
            n += int(batch.labels.numel())
        _sync(self.device)
        if timed:
            self.seconds += time.perf_counter() - t0
            self.images += n

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _load(config_path, overrides: Optional[Sequence[str]], device: str) -> C.Config:
    path = Path(config_path)
    if not path.is_file():
        raise LongtailError(f"bench: config file {path} not found; pass a YAML config such as "
                            f"configs/cifar10_lt/ce.yaml")
    cfg = C.load(path, list(overrides or []))
    cfg.device = device
    C.validate(cfg)
    if cfg.data.name not in IN_MEMORY or cfg.data.train_list:
        raise LongtailError(f"bench compares the in-memory pipeline with a PIL DataLoader and needs an in-memory "
                            f"dataset ({', '.join(IN_MEMORY)}); {cfg.data.name} is read from list files. "
                            f"Use a CIFAR, Tiny ImageNet or digits config.")
    if cfg.data.source == "loader":
        raise LongtailError("bench measures the in-memory batch source; drop data.source=loader from the config "
                            "(the DataLoader side is the reference pipeline)")
    return cfg


def default_workers() -> int:
    """One DataLoader worker per CPU core this process may run on."""
    from longtail.engine.devices import usable_cores

    return usable_cores()


def run_bench(config_path, *, steps: int = 20, warmup: int = 3, overrides: Optional[Sequence[str]] = None,
              device: str = "auto", workers: Optional[int] = None) -> dict:
    """Measure training images/s of our pipeline and of a per-image DataLoader reference, in one process.

    Args:
        config_path: a training YAML config (in-memory dataset).
        steps: timed optimiser steps per pipeline, split over up to 3 alternating rounds.
        warmup: untimed steps per pipeline first (allocation, cudnn autotune, worker start-up, compile).
        overrides: ``key=value`` config overrides.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: DataLoader worker processes of the reference pipeline (0 = in the main process; None =
            :func:`default_workers`, one per usable core).

    Returns:
        ``device``, ``torch``, ``config`` ({``path``, ``resolved``}), ``ours_images_per_s``,
        ``reference_images_per_s``, ``ratio`` (ours / reference), ``ours_images`` / ``reference_images``
        and ``ours_seconds`` / ``reference_seconds`` (timed totals), ``steps``, ``warmup``, ``rounds``,
        ``workers``, ``batch_size``, ``method``, ``dataset``, ``imbalance``, ``amp``, ``channels_last``,
        ``compile``, ``compile_mode``, ``threads``, ``cudnn_benchmark``, ``pin_memory``, ``date``, ``commit``.

    Raises:
        LongtailError: a missing config, a list-file dataset, or bad ``steps`` / ``warmup`` / ``workers``.
    """
    from longtail.engine.devices import resolve_device, seed_everything
    from longtail.rundir import git_commit

    workers = default_workers() if workers is None else workers
    if steps < 1 or warmup < 0 or workers < 0:
        raise LongtailError(f"bench needs steps >= 1, warmup >= 0 and workers >= 0; got steps={steps}, "
                            f"warmup={warmup}, workers={workers}")
    commit = git_commit()  # the code that runs, read before anything else can change the tree
    cfg = _load(config_path, overrides, device)
    dev = resolve_device(cfg.device)
    was_deterministic, was_benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        seed_everything(cfg.train.seed, cfg.train.deterministic, dev)  # as training: cuDNN autotuning on CUDA
        return _run(cfg, config_path, dev, steps, warmup, workers, commit)
    finally:  # a library call leaves the process's global settings as it found them
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark


def _run(cfg: C.Config, config_path, dev: torch.device, steps: int, warmup: int, workers: int, commit: str) -> dict:
    from longtail.data.views import build_torchvision_transform
    from longtail.engine.logging import NullLogger
    from longtail.data.pipeline import view_settings
    from longtail.engine.devices import device_name
    from longtail.engine.run import build_pieces
    from longtail.engine.trainer import EpochSums, Trainer, compile_fn

    pieces = build_pieces(cfg, dev)
    ds = pieces.dataset
    if not isinstance(ds.train, ArraySplit):
        raise LongtailError(f"bench needs an in-memory dataset; {ds.name} is read from files")

    # the reference starts from exactly the same weights and method state, in fp32 and default layout
    ref_net = copy.deepcopy(pieces.network).to(memory_format=torch.contiguous_format)
    ref_method = copy.deepcopy(pieces.method)
    for m in (pieces.method, ref_method):
        m.on_epoch_start(0)

    kw = view_settings(cfg.data, ds)
    tfs = [build_torchvision_transform(p, train=True, **kw) for p in pieces.method.view_presets()]
    loader = torch.utils.data.DataLoader(
        _PILViews(ds.train.images, ds.train.labels, tfs), batch_size=cfg.train.batch_size, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0, collate_fn=_collate,
        pin_memory=dev.type == "cuda")
    trainer = Trainer(cfg, Path("."), network=pieces.network, method=pieces.method,
                      train_batches=pieces.train_batches, eval_batches=pieces.eval_batches,
                      train_counts=ds.train_counts, num_classes=ds.num_classes, device=dev, logger=NullLogger(),
                      forward=compile_fn(pieces.network, cfg.train) if cfg.train.compile else None)  # never saves
    sums = EpochSums.zeros(dev)
    ours = _Pipeline(pieces.network, lambda batch, step: trainer.train_step(batch, step, sums),
                     _ours_batches(pieces.train_batches), dev)
    ref = _Pipeline(ref_net, _ReferenceStep(ref_net, ref_method, cfg), _reference_batches(loader, dev), dev)

    for p in (ours, ref):
        p.run(warmup, timed=False)
    rounds = min(ROUNDS, steps)
    for r in range(rounds):
        n = steps // rounds + (1 if r < steps % rounds else 0)
        for p in (ours, ref) if r % 2 == 0 else (ref, ours):  # alternate who goes first, too
            p.run(n, timed=True)

    return {
        "device": device_name(dev), "torch": torch.__version__,
        "config": {"path": str(config_path), "resolved": C.to_dict(cfg)},
        "ours_images_per_s": ours.images_per_s, "reference_images_per_s": ref.images_per_s,
        "ratio": ours.images_per_s / ref.images_per_s,
        "ours_images": ours.images, "reference_images": ref.images,
        "ours_seconds": ours.seconds, "reference_seconds": ref.seconds,
        "steps": steps, "warmup": warmup, "rounds": rounds, "workers": workers,
        "batch_size": cfg.train.batch_size, "method": cfg.method.name, "dataset": ds.name,
        "imbalance": cfg.data.imbalance, "amp": cfg.train.amp, "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile, "compile_mode": cfg.train.compile_mode, "threads": torch.get_num_threads(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "pin_memory": dev.type == "cuda",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
    }


def format_bench(result: dict) -> str:
    """A short human-readable summary of :func:`run_bench`'s result."""
    r = result
    return (f"{r['dataset']} · {r['method']} · batch {r['batch_size']} · {r['steps']} steps on {r['device']} "
            f"(torch {r['torch']})\n"
            f"  ours       {r['ours_images_per_s']:10.1f} images/s (amp {r['amp']}, channels_last "
            f"{r['channels_last']}, compile {r['compile']})\n"
            f"  reference  {r['reference_images_per_s']:10.1f} images/s (PIL DataLoader, {r['workers']} workers, "
            f"fp32)\n"
            f"  ratio      {r['ratio']:.2f}x")
