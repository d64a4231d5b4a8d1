"""The training loop: epochs, optimiser, lr schedule, AMP, NaN guard, signals and checkpoints.

The loop knows nothing about particular methods: a :class:`~longtail.methods.Method` turns a batch and
the network's output into a loss. Everything that resuming needs is in ``checkpoints/last.pt``, written
atomically at the end of every epoch and when a signal stops the run, so a resumed run continues
bit-exactly on CPU: batches are a pure function of (seed, epoch, step), and the model, optimiser and
RNG states are restored.

Under DDP (torchrun) every rank runs this loop on its share of each global batch; ``train_forward`` is
the DDP wrapper (gradients are averaged over ranks), evaluation uses the plain module on each rank's
chunk of the test split, and everything that decides whether to stop (the NaN guard, a signal,
``max_steps``) is agreed on by all ranks at the same step. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from longtail.config import Config, to_dict
from longtail.data.batches import Batch
from longtail.engine import distributed as dist
from longtail.engine.checkpoint import save_checkpoint
from longtail.engine.ema import WeightEMA
from longtail.engine.evaluator import autocast_context, evaluate, shot_rule
from longtail.engine.logging import RunLogger, epoch_line, progress_bar
from longtail.engine.param_groups import param_groups, regroup_optimizer_state
from longtail.engine.schedule import lr_at
from longtail.errors import ConfigError, Interrupted, NonFiniteLossError
from longtail.mixing import BatchMixer, MixedLabels, mixed_correct

CHECKPOINT_VERSION = 1


def optimizer_impl(impl: str, device_type: str) -> dict:
    """The ``torch.optim.SGD`` / ``AdamW`` keyword that picks its implementation (``{}``: torch's default).

    ``auto`` is the fused kernel on CUDA and CPU (one kernel for all parameters instead of a few per
    parameter: about 380 fewer operations per ResNet-32 step, and faster on both) and torch's default on
    other devices.
    """
    if impl == "auto":
        impl = "fused" if device_type in ("cuda", "cpu") else "default"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False},
            "default": {}}[impl]


def compile_fn(fn: Callable, train_cfg) -> Callable:
    """``torch.compile`` with the config's backend and mode and static shapes (``dynamic=False``): each
    distinct batch shape (the full batch, a last partial one, evaluation's) is its own graph, which is
    what CUDA graphs (``train.compile_mode=reduce-overhead``) need."""
    from torch import _dynamo

    backend = train_cfg.compile_backend
    if backend not in _dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"train.compile_backend '{backend}' is not a torch.compile backend; available: "
                          f"{', '.join(_dynamo.list_backends(exclude_tags=()))}")
    mode = None if train_cfg.compile_mode == "default" or backend != "inductor" else train_cfg.compile_mode
    return torch.compile(fn, backend=backend, mode=mode, dynamic=False)


def build_optimizer(network: torch.nn.Module, cfg: Config,
                    groups: Optional[list[dict]] = None) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optim.name`` over ``groups`` (default: the trainable parameters in the groups of
    :func:`param_groups`: backbone, head, projection; each group's lr is ``optim.lr`` times its ``lr_scale``);
    weight decay on every trainable parameter (the LDAM/BCL convention).

    * ``sgd``: momentum / nesterov, L2 weight decay (``weight_decay * w`` added to the gradient);
    * ``adamw``: Adam with ``betas`` and ``eps`` and decoupled weight decay (Loshchilov & Hutter, ICLR 2019):
      the weights shrink by ``lr * weight_decay * w`` apart from the adaptive step.

    ``optim.impl`` picks the fused / foreach / for-loop kernel for both.
    """
    o = cfg.optim
    groups = param_groups(network, cfg) if groups is None else groups
    if not groups:
        raise ConfigError("no parameter is left to train: model.freeze_stages freezes the whole network")
    device_type = groups[0]["params"][0].device.type
    impl = optimizer_impl(o.impl, device_type)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(float(o.betas[0]), float(o.betas[1])), eps=o.eps,
                                 weight_decay=o.weight_decay, **impl)
    if o.name != "sgd":
        raise ConfigError(f"optim.name must be one of sgd, adamw (got '{o.name}')")
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay, **impl)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write the schedule's ``lr`` into every parameter group, times the group's ``lr_scale`` if it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def eval_due(epoch: int, train_cfg) -> bool:
    """Whether the test set is evaluated after 0-based ``epoch``: every ``train.eval_every`` epochs (0: never
    before the end) and after the last epoch."""
    every = train_cfg.eval_every
    return epoch + 1 == train_cfg.epochs or (every > 0 and (epoch + 1) % every == 0)


def epoch_record(epoch: int, step: int, lr: float, seconds: float, totals: list, names) -> dict:
    """The ``metrics.jsonl`` record of 0-based ``epoch`` from its summed statistics ``totals`` = [loss sum,
    correct, seen, *sums of the loss's named parts ``names``]: means over the images seen."""
    loss_sum, correct, seen, *part_sums = totals
    seen = int(seen)
    record = {"epoch": epoch + 1, "step": step, "lr": lr, "loss": loss_sum / max(seen, 1),
              "train_acc": 100.0 * correct / max(seen, 1), "seconds": seconds,
              "images_per_s": seen / max(seconds, 1e-9)}
    for k, v in zip(names, part_sums):  # epoch means of the loss's named parts
        record[f"loss_{k}"] = v / max(seen, 1)
    return record


@dataclass
class Progress:
    """Where training stands: ``epoch`` epochs completed plus ``step_in_epoch`` steps of the next one."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    wall_seconds: float = 0.0


class EpochSums:
    """One epoch's per-step training statistics, kept on the device (no per-step host reads).

    Step s writes one row ``(loss, correct, *parts)`` into a device buffer (one stack, one copy: a
    constant number of operations whatever the loss reports); the host only remembers how many images
    the step had. The NaN guard and the epoch record read the buffer at their own intervals.
    """

    _CAPACITY = 256  # rows allocated at first; doubled when a step lies beyond

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: Optional[torch.Tensor] = None  # float64 [capacity, 2 + number of parts]
        self.names: tuple[str, ...] = ()  # the loss's named parts, in row order
        self.images: dict[int, int] = {}  # step -> images in that step's batch
        self.seen = 0

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        return cls(device)

    def record(self, step: int, loss: torch.Tensor, correct: torch.Tensor, parts: dict, images: int) -> None:
        """Store step ``step``'s mean loss, number of correct predictions and mean loss parts."""
        if self.rows is None:
            self.names = tuple(parts)
            self.rows = torch.zeros(max(self._CAPACITY, step + 1), 2 + len(self.names), dtype=torch.float64,
                                    device=self.device)
        elif tuple(parts) != self.names:
            raise ValueError(f"the loss reported parts {sorted(parts)} after {sorted(self.names)} in the same epoch")
        while step >= self.rows.shape[0]:
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)])
        values = [loss.detach().float(), correct.float(), *[parts[k].detach().float() for k in self.names]]
        self.rows[step].copy_(torch.stack(values))
        self.images[step] = images
        self.seen += images

    def first_bad(self) -> torch.Tensor:
        """The first recorded step whose loss was not finite, -1 if none: an int64 scalar on the device."""
        if self.rows is None:
            return torch.full((), -1, dtype=torch.int64, device=self.device)
        bad = ~torch.isfinite(self.rows[:max(self.images) + 1, 0])
        return torch.where(bad.any(), bad.to(torch.uint8).argmax(), -1)

    def totals(self) -> torch.Tensor:
        """Device float64 vector (sum of loss x images, correct, seen, sum of each part x images)."""
        if self.rows is None:
            return torch.zeros(3, dtype=torch.float64, device=self.device)
        n = max(self.images) + 1
        weights = torch.tensor([float(self.images.get(s, 0)) for s in range(n)], dtype=torch.float64,
                               device=self.device)  # one copy per epoch
        rows = self.rows[:n]
        weighted = (rows * weights[:, None]).sum(0)
        correct = rows[:, 1].sum()
        return torch.cat([weighted[:1], correct.view(1), weights.sum().view(1), weighted[2:]])


def _add(total: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag that the loop checks after each step."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer:
    """Runs the optimisation of one method on one dataset and writes the run directory's logs.

    Args:
        cfg: the run's config; the trainer reads its ``train``, ``optim`` and ``eval`` sections.
        run_dir: where ``checkpoints/last.pt`` goes.
        network: the plain module (its ``state_dict`` is what is saved); method: the :class:`Method`.
        train_batches, eval_batches: the batch sources; device; logger: a RunLogger (or NullLogger).
        forward: the evaluation forward (e.g. compiled), default ``network``; train_forward: the training
            forward (the DDP wrapper under torchrun), default ``forward``.
        train_counts, num_classes: default to the method's counts and the network's classes.
        echo: where the plain per-epoch line goes when there is no progress bar (default: print on rank
            0; pass ``lambda *a: None`` to silence it).
    """

    def __init__(self, cfg: Config, run_dir: Path, *, network, method, train_batches, eval_batches,
                 device: torch.device, logger: RunLogger, forward: Optional[Callable] = None,
                 train_forward: Optional[Callable] = None, train_counts: Optional[np.ndarray] = None,
                 num_classes: Optional[int] = None, echo: Optional[Callable[[str], None]] = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.network = network  # the plain module: its state_dict is what we save
        self.forward = forward if forward is not None else network  # possibly torch.compile'd
        # the training forward: the DDP wrapper under torchrun (its forward is a collective, so it is
        # never used for evaluation, where the ranks' batch counts may differ)
        self.train_forward = train_forward if train_forward is not None else self.forward
        self.method = method
        self.train_batches = train_batches
        self.eval_batches = eval_batches
        self.train_counts = (method.train_counts.cpu().numpy() if train_counts is None
                             else np.asarray(train_counts))
        self.num_classes = int(network.num_classes if num_classes is None else num_classes)
        self.device = device
        self.logger = logger
        self.echo = echo if echo is not None else (print if dist.is_main() else (lambda *a: None))
        self.optimizer = build_optimizer(network, cfg)
        # train.ema_decay: an average of the weights beside them (evaluated separately, never swapped in)
        self.ema = WeightEMA(network, cfg.train.ema_decay, cfg.train.ema_warmup) \
            if cfg.train.ema_decay is not None else None
        self.last_eval_ema: Optional[dict] = None
        # train.compile: the whole forward + loss + statistics of a step is one graph (under DDP the
        # DDP-wrapped module is compiled instead, by the caller: its forward is a collective)
        self._forward_loss = self._forward_loss_eager
        if cfg.train.compile and not dist.is_distributed():
            self._forward_loss = compile_fn(self._forward_loss_eager, cfg.train)
        # train.mix: the classification view of each training batch is mixed before the forward
        self.mixer = BatchMixer(cfg.train, method.train_counts) if cfg.train.mix != "none" else None
        self.progress = Progress()
        self.last_eval: Optional[dict] = None
        # check the loss on the host every step on CPU (free), every few steps on GPU (a sync point)
        self.nan_check_every = 1 if device.type == "cpu" else 25

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        p = self.progress
        return {"version": CHECKPOINT_VERSION, "model": self.network.state_dict(),
                "method": self.method.state_dict(),  # stateful losses (e.g. BBL's epoch memory and queue)
                "optimizer": self.optimizer.state_dict(), "epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
                "global_step": p.global_step, "wall_seconds": p.wall_seconds, "config": to_dict(self.cfg),
                "rng": rng, **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["model"])
        if "method" in state:
            self.method.load_state_dict(state["method"])
        built = [{k: g[k] for k in ("name", "lr_scale") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(regroup_optimizer_state(state["optimizer"], self.optimizer))
        for g, b in zip(self.optimizer.param_groups, built):  # the config's lr scales, not the checkpoint's
            g.update(b)
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # a run started without train.ema_decay: the average starts from the resumed weights
                self.ema = WeightEMA(self.network, self.ema.decay, self.ema.warmup)
                self.echo("note: the checkpoint holds no EMA of the weights (it was trained without "
                          "train.ema_decay); the average starts from the resumed weights")
        self.progress = Progress(int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]),
                                 float(state.get("wall_seconds", 0.0)))
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def save(self) -> None:
        if not dist.is_main():  # all ranks hold the same weights; only rank 0 writes
            return
        save_checkpoint(self.checkpoint_path, self.state_dict())

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train to ``train.epochs`` (or ``train.max_steps``); return the last evaluation's metrics."""
        cfg, p = self.cfg, self.progress
        epochs, steps_per_epoch = cfg.train.epochs, len(self.train_batches)
        self.logger.truncate_after(p.epoch)
        total = epochs * steps_per_epoch
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        bar = progress_bar(total, min(p.global_step, total), cfg.train.progress)
        # a run stopped by max_steps and resumed with the same limit takes no further step
        stopped_early = cfg.train.max_steps is not None and p.global_step >= cfg.train.max_steps
        try:
            with _SignalGuard() as guard:
                while p.epoch < epochs and not stopped_early:
                    stopped_early = self._run_epoch(p.epoch, guard, bar)
        finally:
            if bar is not None:
                bar.close()
        if self.last_eval is None or stopped_early:
            self.last_eval = self.evaluate()
            if self.ema is not None:
                self.last_eval_ema = self.evaluate(ema=True)
        return self.last_eval

    def evaluate(self, ema: bool = False) -> dict:
        """Metrics of the trained weights, or with ``ema`` of their moving average (train.ema_decay)."""
        cfg = self.cfg
        network = self.ema.module if ema else self.network
        dist.broadcast_buffers_(network)  # every rank evaluates with the statistics rank 0 saves
        return evaluate(network if ema else self.forward, self.method, self.eval_batches, self.train_counts,
                        num_classes=self.num_classes, device=self.device, amp=cfg.train.amp,
                        posthoc_tau=cfg.eval.posthoc_tau, ece_bins=cfg.eval.ece_bins,
                        channels_last=cfg.train.channels_last, shots=shot_rule(cfg.eval))

    def _close_epoch(self, epoch: int, sums, t0: float) -> tuple[float, list]:
        """After the epoch's last step: the last NaN check, the wall time and the progress. Returns the
        epoch's seconds and its statistics summed over the processes (``sums.totals()`` as a list)."""
        self._check_finite(sums.first_bad(), epoch)
        p, seconds = self.progress, time.perf_counter() - t0
        p.wall_seconds += seconds
        p.epoch, p.step_in_epoch = epoch + 1, 0
        totals = sums.totals()
        if dist.is_distributed():  # epoch statistics over the global batches, not rank 0's share
            dist.all_reduce_sum_(totals)
        return seconds, totals.tolist()

    def _train_steps(self, epoch: int, start_step: int, sums, guard: _SignalGuard, bar, t0: float) -> bool:
        """The steps of ``epoch`` from ``start_step`` (the stacked trainer's too): the NaN guard at intervals,
        signals, and ``max_steps``; returns True when ``max_steps`` stopped training (checkpoint saved)."""
        p, max_steps, steps = self.progress, self.cfg.train.max_steps, len(self.train_batches)
        for step, batch in enumerate(self.train_batches.epoch(epoch, start_step=start_step), start=start_step):
            self.train_step(batch, step, sums)
            p.step_in_epoch = step + 1
            p.global_step += 1
            if bar is not None:
                bar.update(1)
            if (step + 1) % self.nan_check_every == 0 or step + 1 == steps:
                signum = self._check_finite(sums.first_bad(), epoch, guard)
                if signum:
                    self._stop_on_signal(signum, t0)
            elif guard.signum is not None and not dist.is_distributed():
                self._check_finite(sums.first_bad(), epoch, guard)
                self._stop_on_signal(guard.signum, t0)
            if max_steps is not None and p.global_step >= max_steps:
                self._check_finite(sums.first_bad(), epoch)
                p.wall_seconds += time.perf_counter() - t0
                self.save()
                return True
        return False

    def _run_epoch(self, epoch: int, guard: _SignalGuard, bar) -> bool:
        """One epoch from ``progress.step_in_epoch``; returns True when ``max_steps`` stopped training."""
        cfg, p = self.cfg, self.progress
        lr = lr_at(epoch, cfg.train.epochs, cfg.optim)
        set_lr(self.optimizer, lr)
        self.method.on_epoch_start(epoch, fresh=p.step_in_epoch == 0)
        self.network.train()
        dev = self.device
        sums = EpochSums(dev)
        start_step = p.step_in_epoch
        t0 = time.perf_counter()
        if self._train_steps(epoch, start_step, sums, guard, bar, t0):
            return True
        seconds, totals = self._close_epoch(epoch, sums, t0)
        record = epoch_record(epoch, p.global_step, lr, seconds, totals, sums.names)
        if eval_due(epoch, cfg.train):
            self.last_eval = self.evaluate()
            record.update({k: self.last_eval[k] for k in ("top1", "many", "medium", "few", "ece")})
            if self.ema is not None:  # the average's metrics under their own keys, beside the weights' own
                self.last_eval_ema = self.evaluate(ema=True)
                record.update({f"ema_{k}": self.last_eval_ema[k] for k in ("top1", "many", "medium", "few", "ece")})
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}",
                            refresh=False)
        else:  # no live bar (train.progress=false, or not a terminal): one plain line per epoch
            self.echo(epoch_line(record, cfg.train.epochs))
        self.logger.log_epoch(record)
        self.save()
        return False

    def train_step(self, batch, step: int, sums: "EpochSums") -> None:
        """One optimiser step on ``batch`` (step ``step`` of its epoch), adding its statistics to ``sums``.

        Nothing here reads a device value on the host: the NaN guard and the epoch statistics stay on
        the device until :meth:`_check_finite` and the epoch's log record read them.

        With ``train.accumulate = k > 1`` the batch runs as k micro-batches (:meth:`_accumulate`) and
        their gradients add up to the whole batch's before the one optimiser step.
        """
        cfg = self.cfg
        views, mix = batch.views, None
        epoch = self.progress.epoch  # the epoch being trained
        if self.mixer is not None and self.mixer.active(epoch):
            mixed, mix = self.mixer(views[0], batch.labels, epoch, step)
            views = [mixed, *views[1:]]
        if cfg.train.accumulate > 1:  # never with mixing (config validation refuses the pair)
            loss, parts, correct = self._accumulate(batch, cfg.train.accumulate)
        else:
            loss, parts, correct = self._forward_loss(views, batch.labels, batch.index, mix)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        # statistics and the NaN guard stay on the device until read at intervals
        sums.record(step, loss, correct, parts, batch.labels.numel())

    def _accumulate(self, batch, k: int) -> tuple:
        """Forward and backward of ``batch`` as ``k`` consecutive micro-batches; returns the whole batch's
        (loss, parts, correct), detached.

        The method's loss is a weighted mean Σ_i w_i l_i / Σ_i w_i over its batch (w ≡ 1: a plain mean;
        class-weighted losses: w_i = w_{y_i}, :meth:`Method.loss_sample_weights`). Micro-batch j's loss is
        multiplied by its share W_j / W of the weights (b_j / B for a plain mean), so the summed gradients
        are those of the whole batch's loss. The shares are device tensors (no host read). Under DDP the
        gradients are all-reduced after the last micro-batch only.
        """
        n = batch.labels.shape[0]
        bounds = [round(j * n / k) for j in range(k + 1)]
        weights = self.method.loss_sample_weights(batch.labels)
        total = weights.sum() if weights is not None else None
        no_sync = getattr(self.train_forward, "no_sync", None)  # the DDP wrapper's, if any
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct_sum, part_sums = None, None, {}
        for j in range(k):
            a, b = bounds[j], bounds[j + 1]
            if a == b:  # a last partial batch smaller than k
                continue
            ctx = no_sync() if no_sync is not None and b < n else contextlib.nullcontext()
            with ctx:
                loss, parts, correct = self._forward_loss([v[a:b] for v in batch.views], batch.labels[a:b],
                                                          batch.index[a:b])
                share = weights[a:b].sum() / total if weights is not None else (b - a) / n
                (loss * share).backward()
            loss_sum = _add(loss_sum, loss.detach() * share)
            correct_sum = _add(correct_sum, correct)
            for name, v in parts.items():
                part_sums[name] = _add(part_sums.get(name), v.detach() * share)
        return loss_sum, part_sums, correct_sum

    def _forward_loss_eager(self, views: list, labels: torch.Tensor, index: torch.Tensor,
                            mix: Optional[MixedLabels] = None):
        """The method's forward pass and loss on one batch, and the number of correct predictions (under
        batch mixing ``mix``: the mixed loss and the λ-weighted count, longtail.mixing)."""
        batch = Batch(views=views, labels=labels, index=index)
        with autocast_context(self.device, self.cfg.train.amp):
            output = self.method.forward_batch(self.train_forward, batch)
            loss, parts = self.method.loss(batch, output) if mix is None else self.method.mixed_loss(batch, output, mix)
        with torch.no_grad():
            correct = mixed_correct(self.method.inference_logits(output), labels, mix)
        return loss, parts, correct

    def _check_finite(self, first_bad: torch.Tensor, epoch: int, guard: Optional[_SignalGuard] = None) -> int:
        """Raise NonFiniteLossError if any rank saw a non-finite loss; return the agreed signal (0: none).

        Under DDP this is a collective (one all-reduce of the bad step and the signal number), called by
        every rank at the same steps, so all ranks stop together.
        """
        signum = (guard.signum or 0) if guard is not None else 0
        if dist.is_distributed():
            flags = torch.stack([first_bad.to(torch.int64), torch.tensor(signum, dtype=torch.int64,
                                                                          device=first_bad.device)])
            dist.all_reduce_max_(flags)
            bad, signum = int(flags[0]), int(flags[1])
        else:
            bad = int(first_bad)
        if bad >= 0:
            raise self._nonfinite_error(bad, epoch)
        return signum

    def _nonfinite_error(self, bad: int, epoch: int) -> NonFiniteLossError:
        """The error for the first bad entry ``bad`` of ``sums.first_bad()`` (here: the step of the epoch)."""
        ckpt = self.checkpoint_path
        kept = f"the last good checkpoint is kept at {ckpt}" if ckpt.exists() else "no checkpoint was written yet"
        return NonFiniteLossError(
            f"the loss became NaN or infinite at epoch {epoch + 1} (1-based), step {bad} of that epoch; "
            f"training stopped and {kept}. Try a lower optim.lr, optim.grad_clip=5, or train.amp=none.")

    def _stop_on_signal(self, signum: int, t0: float) -> None:
        self.progress.wall_seconds += time.perf_counter() - t0
        self.save()
        dist.barrier()  # torchrun stops every rank when one exits with an error: let rank 0 finish saving
        name = signal.Signals(signum).name
        err = Interrupted(
            f"{name} received: stopped after epoch {self.progress.epoch + 1} step {self.progress.step_in_epoch} "
            f"and saved {self.checkpoint_path}; resume with: longtail train --resume {self.run_dir}"
        )
        err.exit_code = 128 + int(signum)
        raise err
