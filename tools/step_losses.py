"""Print every step's loss and loss parts (exact, as float.hex) of a short training run.

A behaviour check across refactors: run it before and after and diff the output.

    LONGTAIL_DATA=DATA python tools/step_losses.py configs/cifar10_lt/bcl.yaml 5 [KEY=VALUE ...]
"""

import json
import sys

import torch

from longtail import config as C
from longtail.engine import run as R
from longtail.engine import trainer as T


def main() -> int:
    path, steps, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    cfg = C.load(path, overrides + ["device=cpu", "train.progress=false"])
    R.seed_everything(cfg.train.seed, cfg.train.deterministic, torch.device("cpu"))
    p = R.build_pieces(cfg, torch.device("cpu"))
    tr = T.Trainer(cfg, None, network=p.network, method=p.method, train_batches=p.train_batches,
                   eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                   num_classes=p.dataset.num_classes, device=torch.device("cpu"), logger=None)
    p.method.on_epoch_start(0)
    p.network.train()
    lr = T.lr_at(0, cfg.train.epochs, cfg.optim)
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    sums = T.EpochSums(torch.device("cpu"))
    for step, batch in zip(range(steps), p.train_batches.epoch(0)):
        tr.train_step(batch, step, sums)
        row = sums.rows[step].tolist()
        print(json.dumps({"step": step, "loss": float(row[0]).hex(), "correct": row[1],
                          **{k: float(v).hex() for k, v in zip(sums.names, row[2:])}}))
    weights = torch.cat([q.detach().flatten() for q in p.network.parameters()])
    print(json.dumps({"weights_sum": float(weights.double().sum()).hex(), "weights_abs": float(weights.double().abs().sum()).hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
