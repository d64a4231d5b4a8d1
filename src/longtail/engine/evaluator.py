"""Evaluator: run a network over an evaluation split and turn its predictions into metrics."""

from __future__ import annotations

import contextlib
from typing import Iterable

import numpy as np
import torch

from longtail.data.splits import ShotRule
from longtail.engine import distributed as dist
from longtail.losses import posthoc_adjust
from longtail.metrics import MetricAccumulator


def shot_rule(eval_cfg) -> ShotRule:
    """The shot groups of a config's ``eval`` section (``many_above``, ``few_below``)."""
    return ShotRule(int(eval_cfg.many_above), int(eval_cfg.few_below))


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast on CUDA for ``amp`` auto/bf16; on CPU only when ``amp=bf16`` is asked for."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(network, method, batches: Iterable, train_counts: np.ndarray, *, num_classes: int,
             device: torch.device, amp: str = "none", posthoc_tau: float = 0.0, ece_bins: int = 15,
             channels_last: bool = False, shots: ShotRule | None = None) -> dict:
    """Metrics of ``network`` on ``batches`` (the last-epoch headline numbers when called at the end).

    ``posthoc_tau > 0`` applies post-hoc logit adjustment, argmax(s - tau log pi), at evaluation only.

    Distributed: every rank passes its own chunk of the split (``EvalBatches(rank=..., world_size=...)``)
    and the plain module (not the DDP wrapper, whose forward is a collective and the ranks' batch counts
    may differ by one). The accumulators' statistics are summed over ranks before the metrics are
    computed, so every rank returns the metrics of the whole split, each image counted once.
    """
    was_training = network.training
    network.eval()
    acc = MetricAccumulator(num_classes, ece_bins=ece_bins, keep_confusion=False)  # not read: not summed
    counts_t = torch.as_tensor(train_counts, dtype=torch.float32, device=device)
    try:
        for batch in batches:
            x = batch.views[0]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp):
                out = network(x)
            logits = method.inference_logits(out).float()
            if posthoc_tau > 0:
                logits = posthoc_adjust(logits, counts_t, posthoc_tau)
            acc.update(logits, batch.labels)
    finally:
        network.train(was_training)
    if dist.is_distributed():
        # NCCL reduces device tensors only; gloo reduces CPU ones: keep the statistics on ``device``
        state = {k: v.to(device) for k, v in acc.state().items()}
        for t in state.values():
            dist.all_reduce_sum_(t)
        acc.load_state(state)
    return acc.compute(train_counts, shots)


def format_table(m: dict) -> str:
    """A markdown table of the headline metrics; empty shot groups are shown as '—'."""

    def f(v):
        return "—" if v is None else f"{v:.2f}"

    head = "| top-1 | Many | Medium | Few | top-5 | ECE |\n|---|---|---|---|---|---|\n"
    row = f"| {f(m.get('top1'))} | {f(m.get('many'))} | {f(m.get('medium'))} | {f(m.get('few'))} | " \
          f"{f(m.get('top5'))} | {f(m.get('ece'))} |"
    return head + row
