"""Helpers of the tests that run several gloo processes on one machine."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(target, out: Path, world: int, timeout: float = 90.0) -> list:
    """Spawn ``target(rank, port, str(out))`` for every rank, fail the test when one hangs or exits non-zero,
    and return what each rank saved to ``out/rank<r>.pt`` (loaded with ``weights_only``)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port, str(out)), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
        p.join(5)
    assert not hung, f"a gloo worker did not finish within {timeout:.0f} s"
    assert [p.exitcode for p in procs] == [0] * world, f"worker exit codes {[p.exitcode for p in procs]}"
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world)]
