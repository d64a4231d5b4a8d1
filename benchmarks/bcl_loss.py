"""BCL loss on CPU: vectorised per-entry class counts vs a Python loop over the contrast entries.

The official BCL code expands the per-class batch counts into one weight per contrast entry with a
Python loop over the 2B + C entries (docs/methods.md §2.6 item 3). ``longtail.losses.BCLLoss`` uses
``bincount`` + ``gather``. The baseline here is written from that description: the batch counts come
from ``bincount`` (cheaper than the original's one-hot rows of a C×C identity, so the baseline is
favoured), a Python loop fills the per-entry vector, and the rest is the same tensor math as ours.
Two loop flavours are timed: over Python ints (``loop_python``, the fastest a loop gets) and over
tensor elements (``loop_tensor_index``, a direct port indexing a tensor once per entry).

Timed, per configuration, in alternating order, after a warm-up:
  - ``forward_backward``: loss forward + backward w.r.t. embeddings and prototypes (what a step pays);
  - ``weights``: only the part that differs, building the per-entry count vector [2B + C].
All give the same loss and gradients (checked before timing).

Usage:
    python benchmarks/bcl_loss.py --out results/bcl_loss [--repeats 15] [--batch 256]

Writes ``metrics.jsonl`` (one line per configuration, method, part and repeat) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from longtail.engine.run import git_commit
from longtail.losses.bcl import BCLLoss

CONFIGS = [(100, 128), (8142, 1024)]  # (classes C, embedding dim D): CIFAR-100-LT, iNat-2018
VIEWS, TAU = 2, 0.1


# ------------------------------------------------------------------------------------------------
# baseline: per-entry counts from a Python loop, then the same tensor math as BCLLoss


def counts_loop_python(target_y: torch.Tensor, num_classes: int) -> torch.Tensor:
    batch_counts = torch.bincount(target_y, minlength=num_classes).tolist()
    labels = target_y.tolist()
    per_entry = [0.0] * len(labels)
    for j, t in enumerate(labels):
        per_entry[j] = batch_counts[t]
    return torch.tensor(per_entry)


def counts_loop_tensor_index(target_y: torch.Tensor, num_classes: int) -> torch.Tensor:
    batch_counts = torch.bincount(target_y, minlength=num_classes).float()
    return torch.tensor([batch_counts[t] for t in target_y])


def counts_vectorised(target_y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What BCLLoss does (timed alone for the ``weights`` part)."""
    return torch.bincount(target_y, minlength=num_classes).float().index_select(0, target_y)


def baseline_bcl(emb: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor,
                 build: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    n, v, d = emb.shape
    z, y = emb.reshape(n * v, d), labels.repeat_interleave(v)
    targets = torch.cat([z, protos])
    target_y = torch.cat([y, torch.arange(protos.shape[0])])
    per_entry = build(target_y, protos.shape[0])  # m_{label(a)} for every contrast entry a
    sim = z @ targets.T / TAU
    is_self = torch.arange(targets.shape[0])[None, :] == torch.arange(n * v)[:, None]
    own = y[:, None] == target_y[None, :]
    logits = sim - torch.where(own, (per_entry - 1).clamp_min(1).log(), per_entry.log())  # as in BCLLoss
    log_d = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
    pos = own & ~is_self
    return (log_d - torch.where(pos, sim, 0.0).sum(1) / pos.sum(1)).mean()


# ------------------------------------------------------------------------------------------------


def make_batch(num_classes: int, dim: int, batch: int, seed: int = 0):
    """Unit embeddings [B, 2, D], prototypes [C, D] and long-tailed labels (imbalance 100)."""
    g = torch.Generator().manual_seed(seed)
    prior = 100.0 ** (-torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1))
    labels = torch.multinomial(prior, batch, replacement=True, generator=g)
    emb = F.normalize(torch.randn(batch, VIEWS, dim, generator=g), dim=-1).requires_grad_()
    protos = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1).requires_grad_()
    return emb, labels, protos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bcl_loss")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    commit = git_commit()  # the code that runs, read before anything else can change the tree
    command = "python " + shlex.join(sys.argv)
    load_before = os.getloadavg()  # other processes on the machine skew CPU timings: record them
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ours = BCLLoss(TAU)
    losses = {
        "longtail": lambda e, y, p: ours(e, y, p),
        "loop_python": lambda e, y, p: baseline_bcl(e, y, p, counts_loop_python),
        "loop_tensor_index": lambda e, y, p: baseline_bcl(e, y, p, counts_loop_tensor_index),
    }
    builders = {"longtail": counts_vectorised, "loop_python": counts_loop_python,
                "loop_tensor_index": counts_loop_tensor_index}
    log = open(out / "metrics.jsonl", "w")
    summary_configs = []
    for num_classes, dim in CONFIGS:
        emb, labels, protos = make_batch(num_classes, dim, a.batch)
        target_y = torch.cat([labels.repeat_interleave(VIEWS), torch.arange(num_classes)])
        # correctness first: same loss and gradients
        values, grads = {}, {}
        for name, fn in losses.items():
            loss = fn(emb, labels, protos)
            values[name] = loss.item()
            grads[name] = torch.autograd.grad(loss, [emb, protos])
        max_diff = max(abs(v - values["longtail"]) for v in values.values())
        grad_diff = max((g - h).abs().max().item() for name in losses
                        for g, h in zip(grads[name], grads["longtail"]))
        assert max_diff < 1e-5 and grad_diff < 1e-5, (values, grad_diff)

        def fwd_bwd(fn) -> float:
            t0 = time.perf_counter()
            loss = fn(emb, labels, protos)
            torch.autograd.grad(loss, [emb, protos])
            return time.perf_counter() - t0

        def weights(build) -> float:
            t0 = time.perf_counter()
            build(target_y, num_classes)
            return time.perf_counter() - t0

        parts = {"forward_backward": (losses, fwd_bwd, a.repeats), "weights": (builders, weights, 3 * a.repeats)}
        times: dict[str, dict[str, list[float]]] = {p: {m: [] for m in losses} for p in parts}
        for part, (fns, timer, repeats) in parts.items():
            for fn in fns.values():  # warm-up: allocator, kernels, caches
                timer(fn)
            for r in range(repeats):
                for name, fn in fns.items():  # alternate so all methods see the same machine state
                    sec = timer(fn)
                    times[part][name].append(sec)
                    rec = {"classes": num_classes, "dim": dim, "batch": a.batch, "anchors": VIEWS * a.batch,
                           "contrast_entries": VIEWS * a.batch + num_classes, "part": part, "method": name,
                           "repeat": r, "seconds": sec}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
        medians = {p: {m: statistics.median(v) for m, v in t.items()} for p, t in times.items()}
        cfg = {"classes": num_classes, "dim": dim, "anchors": VIEWS * a.batch,
               "contrast_entries": VIEWS * a.batch + num_classes, "loss": values, "max_abs_loss_diff": max_diff,
               "max_abs_grad_diff": grad_diff, "median_seconds": medians,
               "speedup": {p: {m: medians[p][m] / medians[p]["longtail"] for m in losses if m != "longtail"}
                           for p in parts}}
        summary_configs.append(cfg)
        print(json.dumps(cfg, indent=1), flush=True)
    log.close()
    summary = {
        "benchmark": "bcl_loss", "device": "cpu", "dtype": "float32", "batch": a.batch, "views": VIEWS,
        "temperature": TAU, "repeats_forward_backward": a.repeats, "repeats_weights": 3 * a.repeats,
        "statistic": "median seconds per call", "configs": summary_configs,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": command, "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
