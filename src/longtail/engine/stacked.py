"""Several seeds in one run (``train.seeds``): N seeds of one configuration trained as one stacked network.

Each seed's pieces are built exactly as a single run with that seed builds them (the same seeding, then
the method, its network and its batch source), so each model starts from its own initialisation and
sees its own sampler order and augmentation draws. The N networks are then stacked
(:mod:`longtail.models.stacked`): one forward pass runs the N models' batches, each model's loss is its
own method's loss on its own batch (contrastive losses and BBL's queues per model), and the sum of the N
losses gives each model exactly its own gradient. The optimiser's updates are elementwise, so they are
those of N separate optimisers; gradient clipping uses each model's own norm.

Every seed gets an ordinary run directory (its config with its seed, metrics, summary, checkpoint,
weights): ``eval``, ``report``, ``compare``, ``extract`` and the two-stage commands read it unchanged, and
its ``checkpoints/last.pt`` is an ordinary checkpoint. A stacked run resumes from the N checkpoints
(``longtail train --resume DIR --resume DIR ...``); one seed's directory also resumes alone, as a single run.

Under torchrun the stacked network is the DDP module: each rank holds its share of every model's batch.
"""

from __future__ import annotations

import copy
import signal
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from longtail import config as C
from longtail.data.batches import Batch, InMemoryBatches
from longtail.data.build import build_dataset
from longtail.engine import distributed as dist
from longtail.engine.checkpoint import check_shapes, load_checkpoint, save_checkpoint
from longtail.engine.devices import device_name, resolve_device, seed_everything
from longtail.engine.evaluator import autocast_context, format_table, shot_rule
from longtail.engine.logging import NullLogger, RunLogger, epoch_line
from longtail.engine.schedule import lr_at
from longtail.engine.trainer import (CHECKPOINT_VERSION, Progress, Trainer, _SignalGuard, epoch_record, eval_due,
                                     set_lr)
from longtail.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLossError
from longtail.losses import posthoc_adjust
from longtail.metrics import MetricAccumulator
from longtail.methods.base import Method
from longtail.models.stacked import StackedNetwork, stack_inputs, stack_networks
from longtail.rundir import RunDir

__all__ = ["train_seeds", "resume_seeds", "train_runs", "seed_config", "seed_run_dirs", "check_supported", "StackedTrainer",
           "build_seed_pieces",
           "evaluate_stacked", "clip_grad_norm_per_model_"]

#: the keys a stacked run honours (every other key must keep its default: a feature added to the single-run
#: trainer is refused here until the stacked trainer supports it, never silently ignored)
SUPPORTED_KEYS = frozenset(
    ["name", "out_dir", "device", "plugins"]
    + [f"data.{k}" for k in (
        "name", "root", "imbalance", "profile", "step_fraction", "split_seed", "format", "download", "verify",
        "augment", "crop_padding", "flip", "cutout", "randaugment_n", "randaugment_m", "randaugment_mstd", "sampler",
        "sampler_k", "source", "num_workers", "train_list", "val_list", "test_list", "num_classes", "path_prefix",
        "check_images", "image_size", "long_tailed")]
    + [f"model.{k}" for k in ("backbone", "head", "scale", "width")]
    + [f"optim.{k}" for k in ("name", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "warmup_epochs",
                              "schedule", "milestones", "gamma", "restart_period", "restart_mult", "grad_clip",
                              "impl")]
    + [f"train.{k}" for k in ("epochs", "batch_size", "seed", "seeds", "max_steps", "deterministic", "amp",
                              "channels_last", "compile_mode", "compile_backend", "drop_last", "sync_bn",
                              "eval_every", "progress")]
    + [f"eval.{k}" for k in ("posthoc_tau", "ece_bins", "batch_size", "many_above", "few_below")]
)


def check_supported(cfg: C.Config) -> list[int]:
    """The seeds of ``cfg`` (``train.seeds``), after refusing what a stacked run cannot do yet."""
    seeds = list(cfg.train.seeds)
    if not seeds:
        raise ConfigError("train.seeds is empty: give the seeds to train together, e.g. train.seeds=[0,1,2]")
    if cfg.train.compile:
        raise ConfigError("train.compile=true is not supported with train.seeds yet: set train.compile=false "
                          "(the stacked network already runs N seeds in one set of kernel launches)")
    flat, default = C.flatten(C.to_dict(cfg)), C.flatten(C.to_dict(C.Config()))
    for k, v in flat.items():
        if k.startswith("method.") or k in SUPPORTED_KEYS:
            continue
        if k not in default or default[k] != v:
            raise ConfigError(f"{k}={v!r} is not supported with train.seeds yet: train these seeds as separate runs")
    return seeds


def seed_config(cfg: C.Config, seed: int) -> C.Config:
    """The ordinary single-run config of one seed: ``train.seed=seed``, no ``train.seeds``; a set ``name``
    gets ``_s<seed>`` so that the seeds' run directories differ."""
    c = copy.deepcopy(cfg)
    c.train.seed, c.train.seeds = int(seed), []
    if cfg.name:
        c.name = f"{cfg.name}_s{seed}"
    return c


def seed_run_dirs(cfgs: Sequence[C.Config], out: Optional[str] = None) -> list[RunDir]:
    """Each seed's run directory: ``<out>/<name>`` with ``out`` (a folder holding the N runs), else
    ``<out_dir>/<name>``; ``name`` is the seed's run name."""
    from longtail.engine.run import check_run_name

    return [RunDir(Path(out if out else c.out_dir) / check_run_name(C.run_name(c))) for c in cfgs]


# ------------------------------------------------------------------------------------------------
# batches, statistics, clipping


class ZippedBatches:
    """The N seeds' batch sources stepped together: each step yields one :class:`Batch` per seed."""

    def __init__(self, sources: Sequence) -> None:
        lengths = {len(s) for s in sources}
        if len(lengths) != 1:
            raise ConfigError(f"train.seeds: the seeds' epochs have different numbers of steps ({sorted(lengths)}) "
                              f"under data.sampler; train these seeds as separate runs")
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.sources[0])

    def epoch(self, epoch: int, start_step: int = 0):
        return zip(*(s.epoch(epoch, start_step=start_step) for s in self.sources))


class StackedEpochSums:
    """One epoch's per-step, per-model statistics on the device: row ``[step, model] = (loss, correct, *parts)``."""

    _CAPACITY = 256

    def __init__(self, device: torch.device, n: int) -> None:
        self.device, self.n = device, n
        self.rows: Optional[torch.Tensor] = None  # float64 [capacity, N, 2 + number of parts]
        self.names: tuple[str, ...] = ()
        self.images: dict[int, int] = {}

    def record(self, step: int, loss: torch.Tensor, correct: torch.Tensor, parts: dict, images: int) -> None:
        """Store step ``step``'s N losses [N], correct counts [N] and parts {name: [N]}."""
        if self.rows is None:
            self.names = tuple(parts)
            self.rows = torch.zeros(max(self._CAPACITY, step + 1), self.n, 2 + len(self.names), dtype=torch.float64,
                                    device=self.device)
        elif tuple(parts) != self.names:
            raise ValueError(f"the loss reported parts {sorted(parts)} after {sorted(self.names)} in the same epoch")
        while step >= self.rows.shape[0]:
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)])
        values = [loss.detach().float(), correct.float(), *[parts[k].detach().float() for k in self.names]]
        self.rows[step].copy_(torch.stack(values, dim=1))
        self.images[step] = images

    def first_bad(self) -> torch.Tensor:
        """``step * N + model`` of the first non-finite loss (steps first), -1 if none: an int64 device scalar."""
        if self.rows is None:
            return torch.full((), -1, dtype=torch.int64, device=self.device)
        bad = (~torch.isfinite(self.rows[:max(self.images) + 1, :, 0])).reshape(-1)
        return torch.where(bad.any(), bad.to(torch.uint8).argmax(), -1)

    def totals(self) -> torch.Tensor:
        """[N, 3 + parts]: per model (sum of loss x images, correct, seen, sum of each part x images)."""
        if self.rows is None:
            return torch.zeros(self.n, 3, dtype=torch.float64, device=self.device)
        s = max(self.images) + 1
        w = torch.tensor([float(self.images.get(i, 0)) for i in range(s)], dtype=torch.float64, device=self.device)
        rows = self.rows[:s]
        weighted = (rows * w[:, None, None]).sum(0)  # [N, 2 + P]
        seen = w.sum().expand(self.n, 1)
        return torch.cat([weighted[:, :1], rows[:, :, 1].sum(0)[:, None], seen, weighted[:, 2:]], dim=1)


def clip_grad_norm_per_model_(parameters, n: int, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for each of the N stacked models on its own: model i's gradients (its slices of
    every stacked parameter) are scaled by ``min(1, max_norm / (||g_i|| + 1e-6))``. Returns the N norms."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(n)
    # splitting dim 0 into (N, -1) is a view whatever the memory format (channels_last gradients included)
    per_model = [g.unflatten(0, (n, -1)) for g in grads]
    norms = torch.stack([torch.linalg.vector_norm(v, 2, dim=tuple(range(1, v.dim()))) for v in per_model])  # [P, N]
    total = torch.linalg.vector_norm(norms, 2, dim=0)  # [N]
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for v in per_model:
        v.mul_(coef.view(n, *[1] * (v.dim() - 1)).to(v.dtype))
    return total


# ------------------------------------------------------------------------------------------------
# optimiser state: split and stack by parameter position


def _split_optimizer(state: dict, network: StackedNetwork) -> list[dict]:
    shapes = [network.shapes[k] for k, _ in network.named_parameters()]
    stacked = [tuple(p.shape) for p in network.parameters()]
    out = []
    for i in range(network.n):
        per = {}
        for idx, entry in state["state"].items():
            per[idx] = {k: (v.reshape(network.n, *shapes[idx])[i].clone()
                            if isinstance(v, torch.Tensor) and tuple(v.shape) == stacked[idx] else copy.deepcopy(v))
                        for k, v in entry.items()}
        out.append({"state": per, "param_groups": copy.deepcopy(state["param_groups"])})
    return out


def _stack_optimizer(states: Sequence[dict], network: StackedNetwork) -> dict:
    stacked = [tuple(p.shape) for p in network.parameters()]
    shapes = [network.shapes[k] for k, _ in network.named_parameters()]
    merged = {}
    for idx, entry in states[0]["state"].items():
        merged[idx] = {}
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(shapes[idx]) and v.dim() > 0:
                merged[idx][k] = torch.stack([s["state"][idx][k] for s in states]).reshape(stacked[idx])
            else:
                merged[idx][k] = v
    return {"state": merged, "param_groups": copy.deepcopy(states[0]["param_groups"])}


# ------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_stacked(network, methods: Sequence[Method], batches, train_counts: np.ndarray, *, num_classes: int,
                     device: torch.device, amp: str = "none", posthoc_tau: float = 0.0, ece_bins: int = 15,
                     channels_last: bool = False, shots=None) -> list[dict]:
    """Each model's metrics on ``batches`` (one stacked forward pass per test batch); see
    :func:`longtail.engine.evaluator.evaluate`."""
    n = len(methods)
    was_training = network.training
    network.eval()
    accs = [MetricAccumulator(num_classes, ece_bins=ece_bins, keep_confusion=False) for _ in range(n)]
    counts_t = torch.as_tensor(train_counts, dtype=torch.float32, device=device)
    try:
        for batch in batches:
            x = stack_inputs([batch.views[0]] * n)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp):
                out = network(x)
            for i, m in enumerate(methods):
                logits = m.inference_logits(out.model(i)).float()
                if posthoc_tau > 0:
                    logits = posthoc_adjust(logits, counts_t, posthoc_tau)
                accs[i].update(logits, batch.labels)
    finally:
        network.train(was_training)
    results = []
    for acc in accs:
        if dist.is_distributed():
            state = {k: v.to(device) for k, v in acc.state().items()}
            for t in state.values():
                dist.all_reduce_sum_(t)
            acc.load_state(state)
        results.append(acc.compute(train_counts, shots))
    return results


# ------------------------------------------------------------------------------------------------
# the trainer


class _Loggers:
    def __init__(self, loggers) -> None:
        self.loggers = list(loggers)

    def truncate_after(self, epoch: int) -> None:
        for lg in self.loggers:
            lg.truncate_after(epoch)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


class StackedTrainer(Trainer):
    """The :class:`Trainer` of N stacked models: one step trains all of them, each on its own batch.

    Args:
        cfgs: the seeds' configs (equal but for the seed and name); run_dirs: their directories.
        network: the :class:`StackedNetwork`; methods: one method per seed (per-model loss state).
        train_batches: one batch source per seed; eval_batches: the (shared) evaluation batches.
        loggers: one RunLogger (or NullLogger) per seed; train_forward: the DDP wrapper under torchrun.
    """

    def __init__(self, cfgs: Sequence[C.Config], run_dirs: Sequence[Path], *, network: StackedNetwork,
                 methods: Sequence[Method], train_batches: Sequence, eval_batches, device: torch.device,
                 loggers: Sequence, train_forward=None, echo=None) -> None:
        self.cfgs, self.run_dirs, self.methods = list(cfgs), [Path(p) for p in run_dirs], list(methods)
        self.seeds = [c.train.seed for c in self.cfgs]
        self.n = len(self.methods)
        self.seed_loggers = list(loggers)
        cfg = copy.deepcopy(self.cfgs[0])
        cfg.train.compile = False
        super().__init__(cfg, self.run_dirs[0], network=network, method=self.methods[0],
                         train_batches=ZippedBatches(train_batches), eval_batches=eval_batches, device=device,
                         logger=_Loggers(loggers), forward=network, train_forward=train_forward, echo=echo)
        self.last_eval: Optional[list[dict]] = None

    # ------------------------------------------------------------------ checkpoints

    def seed_states(self) -> list[dict]:
        """Each seed's ordinary checkpoint (what a single run with that seed would save)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        models = self.network.split_state_dict()
        opts = _split_optimizer(self.optimizer.state_dict(), self.network)
        p = self.progress
        return [{"version": CHECKPOINT_VERSION, "model": models[i], "method": self.methods[i].state_dict(),
                 "optimizer": opts[i], "epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
                 "global_step": p.global_step, "wall_seconds": p.wall_seconds, "config": C.to_dict(self.cfgs[i]),
                 "rng": rng} for i in range(self.n)]

    def load_seed_states(self, states: Sequence[dict]) -> None:
        """Resume from the seeds' checkpoints (all at the same step)."""
        at = {(int(s["epoch"]), int(s["step_in_epoch"]), int(s["global_step"])) for s in states}
        if len(at) != 1:
            raise CheckpointError(f"the seeds' checkpoints are at different steps ({sorted(at)}): resume each run "
                                  f"on its own with 'longtail train --resume DIR'")
        self.network.load_state_dicts([s["model"] for s in states])
        for m, s in zip(self.methods, states):
            if "method" in s:
                m.load_state_dict(s["method"])
        self.optimizer.load_state_dict(_stack_optimizer([s["optimizer"] for s in states], self.network))
        s0 = states[0]
        self.progress = Progress(int(s0["epoch"]), int(s0["step_in_epoch"]), int(s0["global_step"]),
                                 float(s0.get("wall_seconds", 0.0)))
        torch.set_rng_state(s0["rng"]["torch"])
        if "cuda" in s0["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(s0["rng"]["cuda"], self.device)

    def save(self) -> None:
        if not dist.is_main():
            return
        for rd, state in zip(self.run_dirs, self.seed_states()):
            save_checkpoint(rd / "checkpoints" / "last.pt", state)

    # ------------------------------------------------------------------ loop

    def evaluate(self) -> list[dict]:
        cfg = self.cfg
        dist.broadcast_buffers_(self.network)
        return evaluate_stacked(self.network, self.methods, self.eval_batches, self.train_counts,
                                num_classes=self.num_classes, device=self.device, amp=cfg.train.amp,
                                posthoc_tau=cfg.eval.posthoc_tau, ece_bins=cfg.eval.ece_bins,
                                channels_last=cfg.train.channels_last, shots=shot_rule(cfg.eval))

    def _run_epoch(self, epoch: int, guard: _SignalGuard, bar) -> bool:
        cfg, p = self.cfg, self.progress
        lr = lr_at(epoch, cfg.train.epochs, cfg.optim)
        set_lr(self.optimizer, lr)
        for m in self.methods:
            m.on_epoch_start(epoch, fresh=p.step_in_epoch == 0)
        self.network.train()
        sums = StackedEpochSums(self.device, self.n)
        start_step = p.step_in_epoch
        t0 = time.perf_counter()
        if self._train_steps(epoch, start_step, sums, guard, bar, t0):
            return True
        seconds, totals = self._close_epoch(epoch, sums, t0)
        evaluated = eval_due(epoch, cfg.train)
        if evaluated:
            self.last_eval = self.evaluate()
        losses = []
        for i, row in enumerate(totals):  # one row of statistics per seed
            record = epoch_record(epoch, p.global_step, lr, seconds, row, sums.names)
            if evaluated:
                record.update({k: self.last_eval[i][k] for k in ("top1", "many", "medium", "few", "ece")})
            losses.append(record["loss"])
            if bar is None:
                self.echo(f"seed {self.seeds[i]}: " + epoch_line(record, cfg.train.epochs))
            self.seed_loggers[i].log_epoch(record)
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}", refresh=False)
        self.save()
        return False

    def train_step(self, batches, step: int, sums: StackedEpochSums) -> None:
        """One optimiser step of the N models, each on its own batch; no host reads of device values."""
        cfg = self.cfg
        loss, parts, correct = self._forward_loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # each model's gradient is that of its own loss
        if cfg.optim.grad_clip is not None:
            clip_grad_norm_per_model_(self.network.parameters(), self.n, cfg.optim.grad_clip)
        self.optimizer.step()
        sums.record(step, loss, correct, parts, batches[0].labels.numel())

    def _forward_loss_eager(self, batches: Sequence[Batch]):
        """One stacked forward pass; each model's loss from its own method on its own batch: ([N], parts, [N])."""
        with autocast_context(self.device, self.cfg.train.amp):
            x = stack_inputs([m.network_input(b) for m, b in zip(self.methods, batches)])
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.train_forward(x)
            losses, parts, outputs = [], [], []
            for i, (m, b) in enumerate(zip(self.methods, batches)):
                o = m.network_output(out.model(i), b)
                loss, part = m.loss(b, o)
                losses.append(loss)
                parts.append(part)
                outputs.append(o)
        with torch.no_grad():
            correct = torch.stack([(m.inference_logits(o).argmax(dim=1) == b.labels).sum()
                                   for m, o, b in zip(self.methods, outputs, batches)])
        names = tuple(parts[0])
        return torch.stack(losses), {k: torch.stack([p[k] for p in parts]) for k in names}, correct

    def _nonfinite_error(self, bad: int, epoch: int) -> NonFiniteLossError:
        """``bad`` = step × N + model (:class:`StackedEpochSums`): the error names the seed."""
        step, i = divmod(bad, self.n)
        kept = ("the last good checkpoints are kept" if (self.run_dirs[0] / "checkpoints" / "last.pt").exists()
                else "no checkpoint was written yet")
        return NonFiniteLossError(
            f"the loss of seed {self.seeds[i]} became NaN or infinite at epoch {epoch + 1} (1-based), step {step} "
            f"of that epoch; training of all {self.n} seeds stopped and {kept}. Try a lower optim.lr, "
            f"optim.grad_clip=5, or train.amp=none.")

    def _stop_on_signal(self, signum: int, t0: float) -> None:
        self.progress.wall_seconds += time.perf_counter() - t0
        self.save()
        dist.barrier()
        name = signal.Signals(signum).name
        dirs = " ".join(f"--resume {d}" for d in self.run_dirs)
        err = Interrupted(f"{name} received: stopped after epoch {self.progress.epoch + 1} step "
                          f"{self.progress.step_in_epoch} and saved the {self.n} seeds' checkpoints; resume with: "
                          f"longtail train {dirs}")
        err.exit_code = 128 + int(signum)
        raise err


# ------------------------------------------------------------------------------------------------
# from a config to N run directories


def train_seeds(cfg: C.Config, *, out: Optional[str] = None, command: str = "", echo=print,
                overwrite: bool = False) -> list[Path]:
    """Train ``cfg``'s ``train.seeds`` as one stacked network; return the N run directories (one per seed,
    ``<out or out_dir>/<name of the seed's run>``)."""
    C.validate(cfg)
    seeds = check_supported(cfg)
    cfgs = [seed_config(cfg, s) for s in seeds]
    rds = seed_run_dirs(cfgs, out)
    if len({r.path for r in rds}) != len(rds):
        raise ConfigError("train.seeds: the seeds' run directories coincide; leave name unset or without the seed")
    for rd in rds:
        resume = " ".join(f"--resume {r.path}" for r in rds)
        rd.refuse_existing(f"continue the seeds with 'longtail train {resume}', or ", overwrite=overwrite)
    return _run(cfgs, rds, None, command, echo, clear=overwrite)


def resume_seeds(run_dirs: Sequence[str | Path], overrides: Sequence[str] = (), *, command: str = "",
                 echo=print) -> list[Path]:
    """Continue N runs of one configuration, trained together, from their checkpoints, as one stacked run."""
    rds = [RunDir(p) for p in run_dirs]
    cfgs = []
    for rd in rds:
        path = rd.path / "config.yaml"
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {rd.path} has no config.yaml")
        cfgs.append(C.load(path, list(overrides)))
    return train_runs(cfgs, [rd.path for rd in rds], resume=True, command=command, echo=echo)


def train_runs(cfgs: Sequence[C.Config], run_dirs: Sequence[str | Path], *, resume: bool = False,
               command: str = "", echo=print) -> list[Path]:
    """Train (or with ``resume`` continue) the runs ``run_dirs`` of the single-run configs ``cfgs`` (one
    configuration, different ``train.seed``) together as one stacked network."""
    rds = [RunDir(p) for p in run_dirs]
    cfgs = [C.validate(c) for c in cfgs]
    ref = _identity(cfgs[0])
    for rd, c in zip(rds[1:], cfgs[1:]):
        if _identity(c) != ref:
            diff = sorted(k for k in set(ref) | set(_identity(c)) if _identity(c).get(k) != ref.get(k))[:3]
            raise ConfigError(f"{rd.path} is not a seed of the same configuration as {rds[0].path} (differs in "
                              f"{', '.join(diff)}); train them one by one")
    seeds = [c.train.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"the runs to train together have repeated seeds {seeds}")
    check_supported(_with_seeds(cfgs[0], seeds))
    if resume:
        states = [load_checkpoint(rd.checkpoint_path) for rd in rds]
        at = {(int(st["epoch"]), int(st["step_in_epoch"])) for st in states}
        if len(at) != 1:  # refused before anything is written
            raise CheckpointError(f"the seeds' checkpoints are at different steps (epoch, step: {sorted(at)}): "
                                  f"resume each run on its own with 'longtail train --resume DIR'")
    else:
        states = None
        resume_hint = " ".join(f"--resume {r.path}" for r in rds)
        for rd in rds:
            rd.refuse_existing(f"continue the seeds with 'longtail train {resume_hint}', or ")
    return _run(cfgs, rds, states, command, echo, clear=False)


def _identity(cfg: C.Config) -> dict:
    flat = C.flatten(C.to_dict(cfg))
    return {k: v for k, v in flat.items() if k not in ("name", "train.seed", "train.seeds", "out_dir")}


def _with_seeds(cfg: C.Config, seeds: list[int]) -> C.Config:
    c = copy.deepcopy(cfg)
    c.train.seeds = list(seeds)
    return c


def _run(cfgs, rds, states, command, echo, clear) -> list[Path]:
    cfg = cfgs[0]
    resolve_device(cfg.device)
    device = dist.init_from_env(cfg.device)
    try:
        if not dist.is_main():
            echo = _silent
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            _train(cfgs, rds, states, device, command, echo, clear)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
        dist.barrier()
        return [rd.path for rd in rds]
    finally:
        dist.cleanup()


def _silent(*a, **k) -> None:
    pass


def build_seed_pieces(cfgs: Sequence[C.Config], device: torch.device, dataset=None):
    """``(dataset, [Pieces])``: the dataset (or ``dataset``), and each seed's method, network and batch
    source, built as a single run with that seed builds them (seeded right before, in the same order);
    the evaluation batches and the device copy of the training images are shared."""
    from longtail.engine.run import build_pieces

    cfg = cfgs[0]
    if dataset is None:
        if dist.is_distributed() and not dist.is_main():
            dist.barrier()
        seed_everything(cfg.train.seed, cfg.train.deterministic, device)  # as a single run before its dataset
        ds = build_dataset(cfg.data)
        if dist.is_distributed() and dist.is_main():
            dist.barrier()
    else:
        ds = dataset
    pieces = []
    for c in cfgs:
        plain = copy.deepcopy(c)
        plain.train.sync_bn = False  # the stacked network is converted instead
        seed_everything(c.train.seed, c.train.deterministic, device)
        p = build_pieces(plain, device, dataset=ds)
        if type(p.method).forward_batch is not Method.forward_batch:
            raise ConfigError(f"train.seeds: method {c.method.name} runs its own forward pass (it overrides "
                              f"forward_batch, not network_input/network_output) and cannot be stacked; train its "
                              f"seeds as separate runs")
        if pieces and isinstance(p.train_batches, InMemoryBatches):  # one copy of the images on the device
            first = pieces[0].train_batches
            p.train_batches.images, p.train_batches.labels = first.images, first.labels
            p.eval_batches = pieces[0].eval_batches
        pieces.append(p)
    return ds, pieces


def _train(cfgs, rds, states, device, command, echo, clear) -> None:
    cfg = cfgs[0]
    if not cfg.data.verify:
        echo("warning: data.verify=false: checksums are not verified; summary.json records data_verified: false")
    ds, pieces = build_seed_pieces(cfgs, device)
    if states is not None:
        for rd, s, p in zip(rds, states, pieces):
            check_shapes(p.network, s["model"], rd.checkpoint_path)
        if all(rd.is_finished() for rd in rds) and all(_finished(s, c) for s, c in zip(states, cfgs)):
            from longtail.engine.run import _refuse_changes

            for rd, s, c in zip(rds, states, cfgs):
                _refuse_changes(s, c, rd)  # a finished run is not changed by resuming it
            echo(f"the {len(rds)} runs are finished: nothing to do, nothing was changed. To train them further, "
                 f"resume with a larger train.epochs or train.max_steps")
            return
    network = stack_networks([p.network for p in pieces], cfg.model.backbone).to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and dist.is_distributed():
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs GPUs: torch's SyncBatchNorm does not run on CPU/gloo")
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    for p in pieces:
        p.network = None  # the stacked network holds the weights now
    train_forward = network
    if dist.is_distributed():
        train_forward = dist.wrap_ddp(network, device, find_unused_parameters=False)
    dist.barrier()

    # ---- from here on the run directories are written (by rank 0 only)
    if dist.is_main():
        loggers = []
        for c, rd in zip(cfgs, rds):
            if clear:
                rd.clear()
            rd.create().write_config(C.dump(c))
            loggers.append(RunLogger(rd.path))
    else:
        loggers = [NullLogger() for _ in rds]
    trainer = StackedTrainer(cfgs, [rd.path for rd in rds], network=network, methods=[p.method for p in pieces],
                             train_batches=[p.train_batches for p in pieces], eval_batches=pieces[0].eval_batches,
                             device=device, loggers=loggers, train_forward=train_forward, echo=echo)
    if states is not None:
        trainer.load_seed_states(states)
        echo(f"resuming {len(rds)} seeds at epoch {trainer.progress.epoch + 1}, step {trainer.progress.step_in_epoch}")
    seeds = ", ".join(str(c.train.seed) for c in cfgs)
    echo(f"training seeds {seeds} of {cfg.method.name} together ({len(cfgs)} stacked {cfg.model.backbone}s) on "
         f"{ds.name}, on {device_name(device)} -> {', '.join(str(rd.path) for rd in rds)}")
    try:
        metrics = trainer.fit()
    finally:
        trainer.logger.close()
    if not dist.is_main():
        return
    from longtail.engine.run import _train_summary

    for c, rd, sd, m in zip(cfgs, rds, network.split_state_dict(), metrics):
        rd.write_weights(sd)
        rd.write_summary(_train_summary(c, ds, m, trainer, device, command))
        echo(f"seed {c.train.seed}:\n{format_table(m)}\nrun directory: {rd.path}")


def _finished(state: dict, cfg: C.Config) -> bool:
    t = cfg.train
    return int(state["epoch"]) >= t.epochs or (t.max_steps is not None and int(state["global_step"]) >= t.max_steps)
