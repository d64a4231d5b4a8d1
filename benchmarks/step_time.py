"""Milliseconds per training step (batch generation + ``Trainer.train_step``) of a CIFAR-10-LT recipe on CPU.

An A/B tool for code changes: run it alternately with two checkouts (``PYTHONPATH=<checkout>/src``) and
compare. Two untimed warm-up steps, then ``STEPS`` timed ones; the data are the real CIFAR-10-LT split
found through ``$LONGTAIL_DATA``.

    python benchmarks/step_time.py bcl 12 128      # config name, timed steps, batch size
"""

import json
import sys
import time
from pathlib import Path

import torch

from longtail import config as C
from longtail.engine import run as R
from longtail.engine.logging import NullLogger
from longtail.engine.trainer import EpochSums, Trainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    name, steps, bs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml",
                 ["device=cpu", f"train.batch_size={bs}", "train.progress=false"])
    torch.manual_seed(0)
    p = R.build_pieces(cfg, torch.device("cpu"))
    tr = Trainer(cfg, Path("/nonexistent"), network=p.network, method=p.method, train_batches=p.train_batches,
                 eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                 num_classes=p.dataset.num_classes, device=torch.device("cpu"), logger=NullLogger())
    p.method.on_epoch_start(0)
    p.network.train()
    sums = EpochSums.zeros(torch.device("cpu"))
    it = iter(p.train_batches.epoch(0))
    for s in range(2):
        tr.train_step(next(it), s, sums)
    t = time.perf_counter()
    for s in range(2, 2 + steps):
        tr.train_step(next(it), s, sums)
    print(json.dumps({"ms_per_step": (time.perf_counter() - t) / steps * 1e3}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
