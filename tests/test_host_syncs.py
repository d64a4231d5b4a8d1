"""The training loop's GPU fast path has no host syncs per step, and evaluation none per batch.

A host sync is any operation that makes the CPU wait for the device: reading a value (``item``,
``bool``, ``int``, ``tolist``, ``numpy``), an op whose output size depends on the data (``nonzero``,
boolean-mask indexing, ``unique``, ``bincount``), or a tensor built from host data (Python numbers,
lists, NumPy arrays: ``torch.tensor``, ``torch.as_tensor``, ``torch.from_numpy``), which on a GPU reaches
the device through a blocking host-to-device copy. On CPU none of them stalls anything, so the census
records them instead: a dispatch mode logs the ATen ops that sync on CUDA and every ``lift_fresh`` (the op
through which all host data enters torch), and the Python-level readers are wrapped. A whole epoch is
trained twice, once with 8 steps and once with 3; the syncs that remain (the epoch-end NaN check, the
epoch's log record, the evaluation) must not grow with the number of steps. Evaluation is run twice,
with 1 and with 5 batches; its syncs must not grow with the number of batches.

On CPU, reads are free, so some code reads on purpose (label range checks with clear errors, grouping
samples by augmentation op); all of it asks :func:`longtail.hostsync.reads_are_free`, which the test
answers with False to check the path that runs on a GPU.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from longtail import config as C
from longtail import hostsync
from longtail.engine import run as R
from longtail.engine.logging import NullLogger
from longtail.engine.trainer import EpochSums, Trainer

# ATen ops that wait for the device on CUDA (their output, or its size, is read on the host)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
            "bincount", "is_nonzero", "equal"}
READERS = ("tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__")
ROOT = Path(__file__).resolve().parents[1]


class SyncRecorder(TorchDispatchMode):
    """Counts sync-causing ATen ops and Python value reads, each with where in longtail it happened."""

    def __init__(self):
        super().__init__()
        self.hits: collections.Counter = collections.Counter()
        self._patched = {}

    def _where(self) -> str:
        frames = [f for f in traceback.extract_stack()[:-2] if "/longtail/" in f.filename.replace("\\", "/")]
        return " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:])

    def record(self, what: str) -> None:
        self.hits[(what, self._where())] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.record(name)
        elif name == "lift_fresh":  # host data -> tensor: on a GPU a blocking host-to-device copy
            self.record("tensor from host data")
        elif name.startswith("index") and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                              for a in args if isinstance(a, (list, tuple)) for i in a):
            self.record(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for attr in READERS:
            orig = getattr(torch.Tensor, attr)
            self._patched[attr] = orig

            def wrapper(t, *a, _orig=orig, _attr=attr, **k):
                self.record(_attr)
                with torch.utils._python_dispatch._disable_current_modes():
                    return _orig(t, *a, **k)

            setattr(torch.Tensor, attr, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for attr, orig in self._patched.items():
                setattr(torch.Tensor, attr, orig)
            self._patched.clear()

    def total(self) -> int:
        return sum(self.hits.values())


def _cold_caches() -> None:
    """Forget the per-device constants, so that every census starts from the same one-off copies."""
    clear = getattr(hostsync, "clear_constants", None)
    if clear is not None:
        clear()


def _pieces(method: str, batch_size: int, eval_batch_size: int = 500, options: tuple = ()):
    method, _, mix = method.partition("+")  # "ce+mixup": the method with batch mixing
    method, _, variant = method.partition(":")
    extra = ([f"method.bbl_variant={variant}"] if variant else []) + list(options)
    extra += [f"train.mix={mix}"] if mix else []
    # the recipe's own views (AutoAugment + Cutout, SimCLR views) on the tiny digits set
    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{method}.yaml", extra +
                 ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8",
                  f"train.batch_size={batch_size}", "train.epochs=1", "train.progress=false", "device=cpu",
                  "train.eval_every=0", f"eval.batch_size={eval_batch_size}", "optim.warmup_epochs=0"])
    torch.manual_seed(0)
    return cfg, R.build_pieces(cfg, torch.device("cpu"))


def _trainer(cfg, p, run_dir) -> Trainer:
    trainer = Trainer(cfg, run_dir, network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                      num_classes=p.dataset.num_classes, device=torch.device("cpu"), logger=NullLogger())
    trainer.nan_check_every = 10**9  # as on a GPU: the NaN/signal check runs at logging intervals only
    trainer.save = lambda: None
    return trainer


def _epoch_syncs(method: str, batch_size: int, monkeypatch, tmp_path,
                 options: tuple = ()) -> tuple[int, int, collections.Counter]:
    monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)  # take the GPU path
    cfg, p = _pieces(method, batch_size, options=options)
    trainer = _trainer(cfg, p, tmp_path)
    _cold_caches()
    with SyncRecorder() as rec:
        trainer.fit()
    return len(p.train_batches), rec.total(), rec.hits


def _eval_syncs(method: str, eval_batch_size: int, monkeypatch, tmp_path) -> tuple[int, int, collections.Counter]:
    monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)
    cfg, p = _pieces(method, 64, eval_batch_size)
    trainer = _trainer(cfg, p, tmp_path)
    _cold_caches()
    with SyncRecorder() as rec:
        trainer.evaluate()
    return len(p.eval_batches), rec.total(), rec.hits


@pytest.mark.parametrize("method", ["ce", "focal", "cb", "ldam_drw", "la", "bcl", "bbl", "bbl:r2", "bbl:r3",
                                    "bbl:r4", "supcon", "proco", "ce+mixup", "cb+cutmix", "ldam_drw+remix"])
def test_host_syncs_do_not_grow_with_the_number_of_steps(method, monkeypatch, tmp_path):
    steps_a, syncs_a, hits_a = _epoch_syncs(method, 64, monkeypatch, tmp_path / "a")
    steps_b, syncs_b, hits_b = _epoch_syncs(method, 160, monkeypatch, tmp_path / "b")
    assert steps_a >= 2 * steps_b >= 6
    assert syncs_a == syncs_b, (f"host syncs per epoch grow with the steps ({syncs_b} at {steps_b} steps, {syncs_a} at {steps_a}): "
                                f"{dict(hits_a - hits_b)}")


@pytest.mark.parametrize("method,options", [
    ("ce", ("train.accumulate=4",)), ("cb", ("train.accumulate=2",)),  # a plain and a class-weighted mean
    ("ldam_drw", ("train.accumulate=2", "method.drw_epoch=0", "method.label_smoothing=0.1")),
    ("ce", ("train.ema_decay=0.9", "train.ema_warmup=true", "optim.name=adamw"))])
def test_training_options_add_no_host_syncs_per_step(method, options, monkeypatch, tmp_path):
    """Gradient accumulation (its micro-batch shares stay on the device), the EMA update and AdamW."""
    steps_a, syncs_a, hits_a = _epoch_syncs(method, 64, monkeypatch, tmp_path / "a", options)
    steps_b, syncs_b, hits_b = _epoch_syncs(method, 160, monkeypatch, tmp_path / "b", options)
    assert steps_a >= 2 * steps_b >= 6
    assert syncs_a == syncs_b, (f"host syncs per epoch grow with the steps ({syncs_b} at {steps_b} steps, {syncs_a} at {steps_a}): "
                                f"{dict(hits_a - hits_b)}")


@pytest.mark.parametrize("method", ["ce", "ldam_drw", "bcl", "bbl", "proco"])
def test_evaluation_syncs_do_not_grow_with_the_number_of_batches(method, monkeypatch, tmp_path):
    batches_a, syncs_a, hits_a = _eval_syncs(method, 100, monkeypatch, tmp_path / "a")
    batches_b, syncs_b, hits_b = _eval_syncs(method, 500, monkeypatch, tmp_path / "b")
    assert batches_a >= 4 * batches_b >= 4
    assert syncs_a == syncs_b, (f"host syncs of an evaluation grow with its batches ({syncs_b} at {batches_b} batches, "
                                f"{syncs_a} at {batches_a}): {dict(hits_a - hits_b)}")


def test_the_recorder_catches_each_kind_of_sync():
    x = torch.tensor([1.0, -2.0, 3.0])
    with SyncRecorder() as rec:
        x.sum().item()
        bool(x[0] > 0)
        x.tolist()
        x[x > 0]
        torch.bincount(torch.arange(3))
        torch.tensor([1.0, 2.0]) + x[:2]
        torch.as_tensor(0.5, dtype=x.dtype)
    kinds = collections.Counter()
    for (kind, _), n in rec.hits.items():
        kinds[kind] += n
    assert {"item", "__bool__", "tolist", "bincount"} <= set(kinds)
    assert kinds["tensor from host data"] == 2
    assert "index with a boolean mask" in kinds
    with SyncRecorder() as rec:
        (x * 2 + 1).exp().sum()
    assert rec.total() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ce", "ldam_drw", "bcl", "bbl", "bbl:r4", "proco", "ce+mixup", "cb+cutmix",
                                    "ldam_drw+remix"])
def test_cuda_training_steps_raise_no_sync_error(method, tmp_path):
    """On a GPU, torch's sync debug mode turns any host sync inside the steps into an error."""
    method, _, mix = method.partition("+")
    method, _, variant = method.partition(":")
    extra = [f"method.bbl_variant={variant}"] if variant else []
    extra += [f"train.mix={mix}"] if mix else []
    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{method}.yaml", extra +
                 ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8",
                  "train.batch_size=64", "train.epochs=1", "train.progress=false", "device=cuda"])
    dev = torch.device("cuda")
    p = R.build_pieces(cfg, dev)
    trainer = Trainer(cfg, tmp_path, network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                      num_classes=p.dataset.num_classes, device=dev, logger=NullLogger())
    trainer.method.on_epoch_start(0, fresh=True)
    trainer.network.train()
    sums = EpochSums.zeros(dev)
    batches = iter(p.train_batches.epoch(0))
    trainer.train_step(next(batches), 0, sums)  # warm-up: lazy CUDA initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches, start=1):
            trainer.train_step(batch, step, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sums.seen == len(p.dataset.train)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["ce", "bcl"])
def test_cuda_evaluation_batches_raise_no_sync_error(method):
    """Evaluation's per-batch work (view, forward, metric statistics) never waits for the GPU."""
    from longtail.engine.evaluator import autocast_context
    from longtail.metrics import MetricAccumulator

    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{method}.yaml",
                 ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8",
                  "eval.batch_size=100", "train.progress=false", "device=cuda"])
    dev = torch.device("cuda")
    p = R.build_pieces(cfg, dev)
    acc = MetricAccumulator(p.dataset.num_classes)
    p.network.eval()

    def run(batch):
        with torch.no_grad(), autocast_context(dev, cfg.train.amp):
            out = p.network(batch.views[0])
        acc.update(p.method.inference_logits(out).float(), batch.labels)

    batches = iter(p.eval_batches)
    run(next(batches))  # warm-up: lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            run(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert acc.compute(p.dataset.train_counts)["num_samples"] == 500


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_compiled_step_with_cuda_graphs_trains(tmp_path):
    """train.compile with mode reduce-overhead (CUDA graphs) and static shapes runs a whole short run."""
    import json

    cfg = C.load(ROOT / "configs" / "cifar10_lt" / "ce.yaml",
                 ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8",
                  "train.batch_size=64", "train.epochs=2", "train.eval_every=1", "train.progress=false",
                  "device=cuda", "train.compile=true", "train.compile_mode=reduce-overhead", "train.drop_last=true",
                  "optim.warmup_epochs=0"])
    run_dir = R.train(cfg, out=str(tmp_path / "run"), echo=lambda *a, **k: None)
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [line for line in lines if "loss" in line]
    assert summary["completed_epochs"] == 2 and len(epochs) == 2
    assert summary["steps"] == 2 * (sum(summary["train_counts"]) // 64)  # drop_last: full batches only
    assert all(0 < e["loss"] < 10 for e in epochs)  # finite and sane
