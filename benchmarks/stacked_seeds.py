"""Several seeds in one run: time and operations per step of N stacked seeds against N separate runs.

For each method and each N, the same N seeds of the method's CIFAR-10-LT recipe are trained two ways in
one process, on synthetic CIFAR-shaped data (op counts and step times do not depend on pixel values):

* ``stacked``: one :class:`~longtail.engine.stacked.StackedTrainer` step trains the N models (one
  stacked forward/backward, one optimiser step; each model's loss on its own batch);
* ``separate``: N ordinary :class:`~longtail.engine.trainer.Trainer` steps, one per seed (what N
  processes time-sliced on one device amount to, without the process overhead).

A "step" is one optimiser step of all N models, batch production (augmentation) included. Times are the
median over ``--rounds`` rounds of ``--steps`` steps each, after ``--warmup`` steps; stacked and separate
rounds alternate so that a busy machine slows both alike. Operations per step are counted with
``benchmarks/ops_per_step.py``'s counter (ATen ops that do work: each is one or a few kernel launches on a
GPU), on one steady-state step.

    python benchmarks/stacked_seeds.py --out results/stacked_seeds/cpu.json
    python benchmarks/stacked_seeds.py --out /tmp/quick.json --methods ce --ns 1 2 --steps 1 --rounds 1 \\
        --warmup 1 --batch-size 16 --width 4            # a seconds-long smoke invocation

``--ops-only`` skips the timing (operation counts do not depend on the width or the batch size, so they
can be taken at tiny shapes). ``--device cuda`` times on a GPU (synchronised around each round); ``--setting gpu`` counts the GPU's code
paths on CPU (bf16 autocast, fused SGD, no host reads), as ops_per_step.py does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops_per_step import OpCounter, _commit, synthetic_cifar, write_results  # noqa: E402

from longtail import config as C  # noqa: E402
from longtail import hostsync  # noqa: E402
from longtail.engine.logging import NullLogger  # noqa: E402
from longtail.engine.stacked import (StackedEpochSums, StackedTrainer, build_seed_pieces,  # noqa: E402
                                     seed_config)
from longtail.engine.trainer import EpochSums, Trainer  # noqa: E402
from longtail.models.stacked import stack_networks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _config(method: str, n: int, a) -> C.Config:
    name, _, variant = method.partition(":")
    over = [f"method.bbl_variant={variant}"] if variant else []
    over += [f"device={a.device}", "train.progress=false", "optim.warmup_epochs=0", "train.drop_last=true",
             f"train.seeds=[{','.join(str(s) for s in range(n))}]"]
    if a.setting == "gpu":
        over += ["train.amp=bf16", "optim.impl=fused"]
    elif a.device == "cpu":
        over += ["train.amp=none"]
    if a.batch_size:
        over.append(f"train.batch_size={a.batch_size}")
    if a.width:
        over.append(f"model.width={a.width}")
    return C.load(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml", over)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Runner:
    """Steps through the epoch of a trainer, wrapping around at its end."""

    def __init__(self, trainer, sums_factory):
        self.trainer, self.sums_factory = trainer, sums_factory
        self.it, self.step, self.sums = None, 0, None

    def one(self) -> None:
        if self.it is None or self.step >= len(self.trainer.train_batches):
            self.it, self.step, self.sums = iter(self.trainer.train_batches.epoch(0)), 0, self.sums_factory()
        batch = next(self.it)
        self.trainer.train_step(batch, self.step, self.sums)
        self.step += 1


def _count(runner_steps) -> int:
    counter = OpCounter()
    with counter:
        runner_steps()
    return sum(counter.ops.values())


def measure(method: str, n: int, a) -> dict:
    dev = torch.device(a.device)
    cfg = _config(method, n, a)
    cfgs = [seed_config(cfg, s) for s in range(n)]
    ds = synthetic_cifar(n_max=a.n_max)
    ds, pieces = build_seed_pieces(cfgs, dev, dataset=ds)
    # the separate runs get their own copies of each seed's network (the stacked one copies the weights)
    separate = []
    for c, p in zip(cfgs, pieces):
        t = Trainer(c, Path("/nonexistent"), network=p.network, method=p.method, train_batches=p.train_batches,
                    eval_batches=p.eval_batches, train_counts=ds.train_counts, num_classes=ds.num_classes,
                    device=dev, logger=NullLogger())
        p.method.on_epoch_start(0)
        p.network.train()
        separate.append(_Runner(t, lambda: EpochSums.zeros(dev)))
    _, again = build_seed_pieces(cfgs, dev, dataset=ds)  # fresh methods and batch sources for the stacked run
    network = stack_networks([p.network for p in again], cfg.model.backbone).to(dev)
    st = StackedTrainer(cfgs, [Path("/nonexistent")] * n, network=network, methods=[p.method for p in again],
                        train_batches=[p.train_batches for p in again], eval_batches=again[0].eval_batches,
                        device=dev, loggers=[NullLogger()] * n)
    for m in st.methods:
        m.on_epoch_start(0)
    network.train()
    stacked = _Runner(st, lambda: StackedEpochSums(dev, n))
    if len(st.train_batches) < 2:
        raise SystemExit("the synthetic set is too small for this batch size: raise --n-max or lower --batch-size")

    def run_stacked(k):
        for _ in range(k):
            stacked.one()

    def run_separate(k):
        for _ in range(k):
            for r in separate:
                r.one()

    orig_free = hostsync.reads_are_free
    if a.setting == "gpu":
        hostsync.reads_are_free = lambda t: False
    try:
        run_stacked(a.warmup)
        run_separate(a.warmup)
        _sync(dev)
        times = {"stacked": [], "separate": []}
        for _ in range(0 if a.ops_only else a.rounds):
            for name, fn in (("stacked", run_stacked), ("separate", run_separate)):
                _sync(dev)
                t0 = time.perf_counter()
                fn(a.steps)
                _sync(dev)
                times[name].append((time.perf_counter() - t0) / a.steps)
        ops_stacked = _count(lambda: run_stacked(1))
        ops_separate = _count(lambda: run_separate(1))
    finally:
        hostsync.reads_are_free = orig_free
    st_s = statistics.median(times["stacked"]) if times["stacked"] else None
    se_s = statistics.median(times["separate"]) if times["separate"] else None
    return {"method": method, "n": n, "batch_size": cfg.train.batch_size, "backbone": cfg.model.backbone,
            "width": cfg.model.width, "stacked_s_per_step": st_s, "separate_s_per_step": se_s,
            "speedup": se_s / st_s if st_s else None, "stacked_ops_per_step": ops_stacked,
            "separate_ops_per_step": ops_separate, "rounds": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--methods", nargs="+", default=["ce", "ldam_drw", "bcl"])
    ap.add_argument("--ns", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--setting", default="native", choices=["native", "gpu"],
                    help="native: the device's own defaults; gpu: count the GPU paths on CPU (bf16, fused SGD)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--width", type=int, default=None, help="default: the recipe's (16)")
    ap.add_argument("--n-max", type=int, default=1000, help="images of the largest synthetic class")
    ap.add_argument("--ops-only", action="store_true", help="count operations only (no timing)")
    a = ap.parse_args()
    commit = _commit()
    results = []
    print(f"{'method':9s} {'N':>2s} {'stacked s/step':>15s} {'separate s/step':>16s} {'speedup':>8s} "
          f"{'stacked ops':>12s} {'separate ops':>13s}")
    for m in a.methods:
        for n in a.ns:
            r = measure(m, n, a)
            results.append(r)
            t = (f"{r['stacked_s_per_step']:15.4f} {r['separate_s_per_step']:16.4f} {r['speedup']:8.2f}"
                 if r["speedup"] else f"{'-':>15s} {'-':>16s} {'-':>8s}")
            print(f"{m:9s} {n:2d} {t} {r['stacked_ops_per_step']:12d} {r['separate_ops_per_step']:13d}", flush=True)
    write_results(a.out, commit, results,
                  device=torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
