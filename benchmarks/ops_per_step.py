"""Operations per training step: the CPU stand-in for GPU kernel launches.

ResNet-32 at CIFAR batch sizes is launch-bound on a GPU: its step time is roughly the number of kernels it
launches, not their arithmetic. This script counts, on CPU, the ATen operations that do work in one
training step of each method's CIFAR-10-LT recipe, split by phase:

* ``augment``: producing the batch (gather of the uint8 images, every view's augmentation);
* ``forward``: the method's forward pass (``Method.forward_batch``);
* ``loss``: the method's loss (``Method.loss``);
* ``backward``: ``loss.backward()``;
* ``optimizer``: ``optimizer.step()`` (and ``zero_grad``, which sets gradients to None: no work);
* ``bookkeeping``: the rest of ``Trainer.train_step`` (NaN guard, epoch statistics).

An operation "does work" when it is not a view or metadata-only op (``view``, ``permute``, ``expand``,
``slice``, ``detach``, ``alias``, ``empty`` ...). Each such op is one or a few kernel launches on a GPU.
The bytes allocated per step are the sizes of the fresh outputs of those ops (in-place and view outputs
excluded): what a caching allocator hands out per step.

Two settings are counted: ``gpu`` (what a GPU run executes: ``train.amp=bf16`` autocast, the fused
optimiser ``optim.impl=fused``, and the code paths that avoid host reads, i.e.
``longtail.hostsync.reads_are_free`` answering False as it does for CUDA tensors) and ``cpu`` (the CPU
defaults: no autocast, ``optim.impl=auto``, the CPU's own paths). The
counted step is a steady-state one (the third, after momentum buffers exist). The data are synthetic
CIFAR-shaped images (32x32x3 uint8, 10 classes, long-tailed counts): op counts do not depend on pixel values.

    python benchmarks/ops_per_step.py --out results/ops_per_step/after.json [--methods ce bcl ...]

Only public entry points that exist since commit 4949603 are used (``build_pieces``, ``Trainer``,
``train_step``), so the same script measures older commits (run it with ``PYTHONPATH=<old checkout>/src``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longtail import config as C
from longtail import hostsync
from longtail.data.base import ArraySplit, Dataset
from longtail.engine.logging import NullLogger
from longtail.engine.run import build_pieces
from longtail.engine.trainer import EpochSums, Trainer

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["ce", "focal", "cb", "ldam_drw", "la", "bcl", "supcon", "bbl", "bbl:r2", "bbl:r3", "bbl:r4"]
PHASES = ("augment", "forward", "loss", "backward", "optimizer", "bookkeeping")
# metadata-only ops that are not views by schema but launch nothing on a GPU
NO_WORK = {"detach", "alias", "lift_fresh", "empty", "empty_strided", "empty_like", "set_", "resize_",
           "_reshape_alias", "_unsafe_view", "sym_size", "sym_stride", "sym_numel", "is_same_size",
           "_has_compatible_shallow_copy_type", "is_nonzero", "result_type", "prim_layout", "_nested_tensor_size",
           "_record_function_enter_new", "_record_function_exit", "record_stream"}


class OpCounter(TorchDispatchMode):
    """Counts working ATen ops and the bytes of their fresh outputs, per phase."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "bookkeeping"
        self.ops: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        old, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = old

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if getattr(func, "is_view", False) or name in NO_WORK:
            return out
        self.ops[self.phase] += 1
        self.names[self.phase][name] += 1
        fresh = [r.alias_info is None for r in func._schema.returns]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for i, o in enumerate(outs):
            is_fresh = fresh[i] if i < len(fresh) else fresh[-1] if fresh else False
            if not is_fresh:
                continue
            for t in (o if isinstance(o, (list, tuple)) else (o,)):
                if isinstance(t, torch.Tensor):
                    self.bytes[self.phase] += t.numel() * t.element_size()
        return out


def synthetic_cifar(n_max: int = 600, imbalance: float = 10.0, classes: int = 10, seed: int = 0) -> Dataset:
    """CIFAR-shaped long-tailed data (exponential profile), random pixels."""
    rng = np.random.default_rng(seed)
    counts = [max(1, int(n_max * (1 / imbalance) ** (i / (classes - 1)))) for i in range(classes)]
    labels = np.repeat(np.arange(classes), counts).astype(np.int64)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    test_labels = np.repeat(np.arange(classes), 20).astype(np.int64)
    test = rng.integers(0, 256, size=(len(test_labels), 32, 32, 3), dtype=np.uint8)
    return Dataset(name="cifar10", num_classes=classes, class_names=[str(i) for i in range(classes)],
                   train=ArraySplit(images, labels), test=ArraySplit(test, test_labels),
                   mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), image_size=32)


def count_method(method: str, setting: str, steps_before: int = 2) -> dict:
    name, _, variant = method.partition(":")
    over = [f"method.bbl_variant={variant}"] if variant else []
    over += ["device=cpu", "train.progress=false", "optim.warmup_epochs=0"]
    over += ["train.amp=bf16", "optim.impl=fused"] if setting == "gpu" else ["train.amp=none", "optim.impl=auto"]
    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml", over)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    p = build_pieces(cfg, dev, dataset=synthetic_cifar())
    trainer = Trainer(cfg, Path("/nonexistent"), network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                      num_classes=p.dataset.num_classes, device=dev, logger=NullLogger())
    p.method.on_epoch_start(0)
    p.network.train()
    sums = EpochSums.zeros(dev)
    batches = iter(p.train_batches.epoch(0))
    assert len(p.train_batches) > steps_before, "the synthetic set is too small for the recipe's batch size"
    orig_free = hostsync.reads_are_free
    if setting == "gpu":  # the paths a CUDA tensor takes (modules look the switch up at call time)
        hostsync.reads_are_free = lambda t: False
    try:  # warm-up steps on the same paths: one-off constants are built before the counted step
        for step in range(steps_before):
            trainer.train_step(next(batches), step, sums)
    finally:
        hostsync.reads_are_free = orig_free

    counter = OpCounter()
    method_obj, opt = p.method, trainer.optimizer
    orig_fb, orig_loss, orig_step = method_obj.forward_batch, method_obj.loss, opt.step
    orig_backward = torch.Tensor.backward

    def phased(fn, phase):
        def wrapper(*a, **k):
            with counter.in_phase(phase):
                return fn(*a, **k)
        return wrapper

    if setting == "gpu":
        hostsync.reads_are_free = lambda t: False
    method_obj.forward_batch = phased(orig_fb, "forward")
    method_obj.loss = phased(orig_loss, "loss")
    opt.step = phased(orig_step, "optimizer")
    torch.Tensor.backward = phased(orig_backward, "backward")
    try:
        with counter:
            with counter.in_phase("augment"):
                batch = next(batches)
            trainer.train_step(batch, steps_before, sums)
    finally:
        torch.Tensor.backward = orig_backward
        hostsync.reads_are_free = orig_free
        del method_obj.forward_batch, method_obj.loss, opt.step
    total_ops, total_bytes = sum(counter.ops.values()), sum(counter.bytes.values())
    return {"method": method, "setting": setting, "batch_size": cfg.train.batch_size,
            "views": list(p.method.view_presets()), "ops": total_ops,
            "ops_by_phase": {ph: counter.ops[ph] for ph in PHASES},
            "bytes_allocated": total_bytes, "bytes_by_phase": {ph: counter.bytes[ph] for ph in PHASES},
            "top_ops": {ph: dict(counter.names[ph].most_common(12)) for ph in PHASES}}


def _commit() -> str:
    import longtail

    here = Path(longtail.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--settings", nargs="+", default=["gpu", "cpu"], choices=["gpu", "cpu"])
    a = ap.parse_args()
    commit = _commit()
    results = []
    for setting in a.settings:
        for m in a.methods:
            r = count_method(m, setting)
            results.append(r)
            print(f"{setting:4s} {m:9s} ops {r['ops']:6d}  " +
                  "  ".join(f"{ph} {r['ops_by_phase'][ph]}" for ph in PHASES) +
                  f"  MB {r['bytes_allocated'] / 2**20:.1f}", flush=True)
    write_results(a.out, commit, results)
    return 0


def write_results(path: str, commit: str, results: list, **extra) -> None:
    """Write ``results`` to the JSON file ``path`` with the command, commit, torch, python, machine (plus
    ``extra``, e.g. the device), threads and date."""
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": commit,
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           **extra, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "results": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
