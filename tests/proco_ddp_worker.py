"""The gloo worker of test_proco.py's DDP check, in its own light module: a spawned process imports only
torch and the ProCo loss, not the whole test module."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longtail.losses import ProCoLoss

D64 = torch.float64


WORLD = 2
DDP_COUNTS = [9, 5, 3, 2, 1]


def _ddp_batches():
    g = torch.Generator().manual_seed(123)
    z = [F.normalize(torch.randn(8, 2, 32, generator=g, dtype=D64), dim=-1).float() for _ in range(2)]
    y = [torch.tensor([0, 1, 1, 3, 0, 3, 2, 1]), torch.tensor([1, 0, 0, 0, 3, 3, 1, 2])]  # class 4 unseen
    return z, y


def _ddp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        zs, ys = _ddp_batches()
        loss = ProCoLoss(DDP_COUNTS, dim=32, temperature=0.1, seed=5)
        loss.start_epoch(0)
        n = 8 // WORLD
        grads = []
        for z, y in zip(zs, ys):
            zl = z[rank * n:(rank + 1) * n].clone().requires_grad_(True)
            loss(zl, y[rank * n:(rank + 1) * n]).loss.backward()
            grads.append(zl.grad)
        torch.save({"state": loss.state_dict(), "grads": grads}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
