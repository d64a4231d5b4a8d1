"""From a config to a finished run directory, and back: the one place where the pieces are wired together.

Order matters for "nothing lost or half-written": the config, the data, the method and (when
resuming) the checkpoint are all checked before anything in the run directory is created or changed.

Distributed (``torchrun --nproc_per_node N -m longtail train ...``): every rank builds the same pieces
with its ``rank``/``world_size`` share of the data, trains the DDP-wrapped network and evaluates its
chunk of the test split; only rank 0 creates or writes the run directory and prints. ``train.batch_size``
is the GLOBAL batch (each rank takes ``batch_size / N``) and ``optim.lr`` is used as given: the global
batch is explicit in the config, so there is no implicit learning-rate scaling with N.
``train.sync_bn=true`` converts BatchNorm layers to SyncBatchNorm (GPUs only: torch's SyncBatchNorm does
not run on CPU/gloo); without it each rank normalises with its own share's batch statistics.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from longtail import config as C
from longtail.data.base import Dataset
from longtail.data.build import build_dataset
from longtail.data.pipeline import eval_batches, train_batches
from longtail.engine import distributed as dist
from longtail.engine.checkpoint import check_shapes, load_checkpoint
from longtail.engine.devices import device_name, resolve_device, seed_everything
from longtail.engine.evaluator import evaluate, format_table, shot_rule
from longtail.engine.logging import NullLogger, RunLogger
from longtail.engine.param_groups import param_groups
from longtail.engine.trainer import Trainer, compile_fn
from longtail.errors import CheckpointError, ConfigError
from longtail.methods import create_method
from longtail.models.finetune import apply_finetuning
from longtail.models.pretrained import load_pretrained, report_line
from longtail.mixing import check_criterion
from longtail.rundir import RunDir, environment, git_commit, summary_record

__all__ = ["Pieces", "build_pieces", "load_run", "train", "evaluate_run", "load_resume_config", "resolve_device",
           "seed_everything", "device_name", "git_commit"]


@dataclass
class Pieces:
    """Everything a run is made of, built from its config."""

    dataset: Dataset
    method: torch.nn.Module
    network: torch.nn.Module
    train_batches: object
    eval_batches: object


def build_pieces(cfg: C.Config, device: torch.device, dataset: Optional[Dataset] = None) -> Pieces:
    """The dataset (or ``dataset``), method, network and batch sources of ``cfg`` on ``device``, for this
    process's share of a distributed run."""
    ds = dataset or build_dataset(cfg.data)
    method = create_method(cfg, ds.train_counts)
    check_criterion(method.criterion, cfg.train.mix, cfg.method.name)  # Remix needs per-sample weights
    network = apply_finetuning(method.build_network(ds.num_classes, ds.in_channels), cfg.model)
    method.to(device)
    if cfg.train.sync_bn and dist.is_distributed():
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs GPUs: torch's SyncBatchNorm does not run on CPU/gloo. "
                              "Set train.sync_bn=false (each process then normalises with its own share's "
                              "statistics) or train on GPUs")
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network.to(device)
    if cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    share = dict(rank=dist.rank(), world_size=dist.world_size())
    t = cfg.train
    train = train_batches(cfg.data, ds, method.view_presets(), batch_size=t.batch_size, seed=t.seed,
                          epochs=t.epochs, device=device, drop_last=t.drop_last, channels_last=t.channels_last,
                          **share)
    return Pieces(ds, method, network, train, eval_batches(cfg.data, ds, batch_size=cfg.eval.batch_size,
                                                          device=device, **share))


def load_run(run_dir: str | Path, device: torch.device, overrides: Optional[list[str]] = None,
             ema: bool = False) -> tuple:
    """A finished (or checkpointed) run rebuilt from its directory: ``(cfg, pieces)`` with the network's
    final weights (with ``ema``: their moving average, train.ema_decay) loaded, in eval mode. The one way
    every command (eval, extract, decouple) loads a run."""
    rd = RunDir(run_dir)
    cfg = load_run_config(rd.require_config(), overrides or [])
    cfg.train.sync_bn = False  # evaluation normalises with the running statistics: nothing to synchronise
    pieces = build_pieces(cfg, device)
    sd = rd.load_weights(ema=ema)
    path = rd.ema_weights_path if ema else rd.weights_path
    check_shapes(pieces.network, sd, path if path.is_file() else rd.checkpoint_path)
    pieces.network.load_state_dict(sd)
    pieces.network.eval()
    return cfg, pieces


def load_resume_config(resume: str, config_path: Optional[str], overrides: list[str]) -> C.Config:
    """The config of a run to resume: its own ``config.yaml`` (or ``config_path``) plus ``overrides``."""
    run_dir = Path(resume)
    path = Path(config_path) if config_path else run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no config.yaml (pass --config FILE)")
    return load_run_config(path, overrides) if config_path is None else C.load(path, overrides)


def load_run_config(path: Path, overrides: Optional[list[str]] = None) -> C.Config:
    """The ``config.yaml`` of a run directory: :func:`longtail.config.load`, plus the values of method
    parameters added after the run was written (``config.legacy``), so old runs keep what they trained with."""
    from longtail.config.legacy import upgrade_run_config
    from longtail.config.yamlio import read_yaml_file

    cfg = C.load(path, overrides)
    upgrade_run_config(cfg, read_yaml_file(path), overrides or [])
    return cfg


def check_run_name(name: str) -> str:
    """A run name is one plain folder name: the run goes to ``out_dir/name`` and never leaves ``out_dir``."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or len(name.encode()) > 255:
        raise ConfigError(f"name={name!r} must be a plain folder name (no '/', '\\', '..'; at most 255 bytes): "
                          f"the run is written to out_dir/name. Use --out DIR to write it elsewhere")
    return name


def train(cfg: C.Config, *, out: Optional[str] = None, resume: Optional[str] = None,
          command: str = "", echo=print, overwrite: bool = False) -> Path:
    """Train one run end to end and return its directory (with ``train.seeds``: the seeds' N directories,
    trained together as one stacked network, see :mod:`longtail.engine.stacked`).

    A folder that already holds a run is refused unless ``overwrite`` (its run files are then deleted
    when writing starts, after every check passed). Resuming a finished run changes nothing and says so,
    unless the config extends it (a larger ``train.epochs`` or ``train.max_steps``).
    """
    C.validate(cfg)
    if cfg.train.seeds:  # several seeds as one stacked network: a list of N run directories
        if resume:
            raise ConfigError("train.seeds with --resume: resume the seeds' runs with --resume DIR --resume DIR ...")
        from longtail.engine.stacked import train_seeds

        return train_seeds(cfg, out=out, command=command, echo=echo, overwrite=overwrite)
    check_run_name(C.run_name(cfg))
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it afresh: pass only one of them")
    resolve_device(cfg.device)  # a clear ConfigError before any process group is joined
    device = dist.init_from_env(cfg.device)
    try:
        if not dist.is_main():
            echo = _silent
        if resume:
            rd = RunDir(resume)
        else:
            rd = RunDir(out if out else Path(cfg.out_dir) / C.run_name(cfg))
            rd.refuse_existing(f"continue it with 'longtail train --resume {rd.path}', or ", overwrite=overwrite)
        # every rank reads the checkpoint (read-only) so all start from the same state
        state = load_checkpoint(rd.checkpoint_path) if resume else None
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            seed_everything(cfg.train.seed, cfg.train.deterministic, device)  # same init on every rank
            _train(cfg, rd, state, device, command, echo, clear=overwrite)
        finally:  # a library call must not leave the process in deterministic mode
            torch.use_deterministic_algorithms(was_deterministic)
        dist.barrier()  # rank 0 has written the outputs before any rank leaves the group
        return rd.path
    finally:
        dist.cleanup()


def _silent(*a, **k) -> None:
    pass


def _finished(state: dict, cfg: C.Config) -> bool:
    """The checkpoint has trained every epoch, or the ``train.max_steps`` steps, that ``cfg`` asks for."""
    t = cfg.train
    return int(state["epoch"]) >= t.epochs or (t.max_steps is not None and int(state["global_step"]) >= t.max_steps)


def _refuse_changes(state: dict, cfg: C.Config, rd: RunDir) -> None:
    """A finished run is not changed by resuming it: settings that differ from its own are an error."""
    old, new = C.flatten(state.get("config") or {}), C.flatten(C.to_dict(cfg))
    changed = sorted(k for k in new if k in old and old[k] != new[k] and k not in C.NEUTRAL_KEYS)
    if changed:
        shown = ", ".join(f"{k}={new[k]!r} (the run's: {old[k]!r})" for k in changed[:4])
        raise ConfigError(f"{rd.path} is finished; resuming it would not apply {shown}. Re-evaluate with "
                          f"'longtail eval {rd.path} KEY=VALUE', or train a new run (nothing was changed)")


def _progress_text(state: dict, cfg: C.Config) -> str:
    t = cfg.train
    if t.max_steps is not None and int(state["global_step"]) >= t.max_steps and int(state["epoch"]) < t.epochs:
        return f"{state['global_step']} of train.max_steps={t.max_steps} steps"
    return f"{min(int(state['epoch']), t.epochs)} of {t.epochs} epochs"


def _train(cfg: C.Config, rd: RunDir, state: Optional[dict], device: torch.device, command: str, echo,
           clear: bool = False) -> None:
    if not cfg.data.verify:
        echo("warning: data.verify=false: checksums are not verified; summary.json records data_verified: false")
    if dist.is_distributed() and not dist.is_main():
        dist.barrier()  # rank 0 builds (and possibly downloads/extracts) the dataset first
    pieces = build_pieces(cfg, device)
    if dist.is_distributed() and dist.is_main():
        dist.barrier()
    ds = pieces.dataset
    pretrained = None
    if state is not None:
        check_shapes(pieces.network, state["model"], rd.checkpoint_path)
        if rd.is_finished() and _finished(state, cfg):
            _refuse_changes(state, cfg, rd)
            echo(f"{rd.path} is finished ({_progress_text(state, cfg)}): nothing to do, nothing was changed. "
                 f"To train it further, resume with a larger train.epochs or train.max_steps")
            return
        _check_optimizer_groups(state, pieces.network, cfg, rd.checkpoint_path)
        pretrained = rd.read_json(PRETRAINED_FILE)  # the checkpoint's weights replace the file's
    elif cfg.model.pretrained:
        # every check of the file runs here, before anything in the run directory is written
        pretrained = load_pretrained(pieces.network, cfg.model.pretrained, strict=cfg.model.pretrained_strict,
                                     classifier=cfg.model.pretrained_classifier, backbone_name=cfg.model.backbone)
        echo(report_line(pretrained))
    # evaluation's forward; the training step's forward + loss is compiled by the Trainer as one graph
    forward = compile_fn(pieces.network, cfg.train) if cfg.train.compile else pieces.network
    train_forward = pieces.network
    if dist.is_distributed():
        # every head runs each step (supcon builds no prototype head), so no parameter goes unused
        ddp = dist.wrap_ddp(pieces.network, device, find_unused_parameters=False)
        train_forward = compile_fn(ddp, cfg.train) if cfg.train.compile else ddp
    dist.barrier()  # every rank has checked the run directory before rank 0 starts writing it

    # ---- from here on the run directory is written (by rank 0 only)
    if dist.is_main():
        if clear:  # --overwrite: the old run's files go only now, once everything was checked
            rd.clear()
        rd.create().write_config(C.dump(cfg))
        if pretrained is not None and state is None:
            rd.write_json(PRETRAINED_FILE, pretrained)
        logger = RunLogger(rd.path)
    else:
        logger = NullLogger()
    trainer = Trainer(cfg, rd.path, network=pieces.network, method=pieces.method,
                      train_batches=pieces.train_batches, eval_batches=pieces.eval_batches, device=device,
                      logger=logger, forward=forward, train_forward=train_forward, echo=echo)
    if state is not None:
        trainer.load_state_dict(state)
        echo(f"resuming {rd.path} at epoch {trainer.progress.epoch + 1}, step {trainer.progress.step_in_epoch}")
    echo(f"training {C.run_name(cfg)}: {ds.name} (imbalance {_imbalance_text(ds)}, {len(ds.train)} train / "
         f"{len(ds.test)} test images, {ds.num_classes} classes), method {cfg.method.name}, "
         f"{cfg.model.backbone}, on {device_name(device)} -> {rd.path}")
    try:
        metrics = trainer.fit()
    finally:
        logger.close()
    if not dist.is_main():
        return
    rd.write_weights(pieces.network.state_dict())
    if trainer.ema is not None:
        rd.write_weights(trainer.ema.module.state_dict(), ema=True)
    rd.write_summary(_train_summary(cfg, ds, metrics, trainer, device, command, pretrained))
    echo(format_table(metrics))
    if trainer.last_eval_ema is not None:
        echo(f"EMA weights (train.ema_decay={cfg.train.ema_decay}, model_ema.safetensors):\n"
             f"{format_table(trainer.last_eval_ema)}")
    echo(f"run directory: {rd.path}  (report: longtail report {rd.path})")


def _check_optimizer_groups(state: dict, network: torch.nn.Module, cfg: C.Config, path: Path) -> None:
    """The checkpoint's optimiser has the parameter groups this config trains (a checkpoint from before the
    groups existed, one group over every parameter, also fits); else a CheckpointError before anything is
    written."""
    saved = [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
    ours = [len(g["params"]) for g in param_groups(network, cfg)]
    if saved != ours and not (len(saved) == 1 and saved[0] == sum(ours)):
        raise CheckpointError(f"cannot resume from {path}: it trained {sum(saved)} parameters in groups of {saved}, "
                              f"the current config trains {sum(ours)} in groups of {ours} (was model.freeze_stages "
                              f"changed?). Resume with the run's own config.yaml, or start a new run")


def split_imbalance(ds: Dataset) -> Optional[float]:
    """The imbalance factor the split was built with, else (data that brings its own split) the measured one."""
    from longtail.data.splits import measured_imbalance

    return ds.imbalance if ds.imbalance is not None else measured_imbalance(ds.train_counts)


def _imbalance_text(ds: Dataset) -> str:
    rho = split_imbalance(ds)
    return "undefined: a class has no training image" if rho is None else \
        (f"{rho:g}" if ds.imbalance is not None else f"{rho:.4g}, measured")


def _train_summary(cfg: C.Config, ds: Dataset, metrics: dict, trainer: Trainer, device: torch.device,
                   command: str, pretrained: Optional[dict] = None) -> dict:
    p = trainer.progress
    tags = {"dataset": ds.name, "imbalance": split_imbalance(ds), "method": cfg.method.name,
            "backbone": cfg.model.backbone, "epochs": cfg.train.epochs,
            "completed_epochs": p.epoch + p.step_in_epoch / max(len(trainer.train_batches), 1),
            "steps": p.global_step, "batch_size": cfg.train.batch_size, "augment": cfg.data.augment,
            "sampler": cfg.data.sampler, "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
            "selection": "last", "posthoc_tau": cfg.eval.posthoc_tau}
    return summary_record(kind="train", name=C.run_name(cfg), tags=tags, metrics=metrics,
                          train_counts=ds.train_counts, class_names=ds.class_names, wall_seconds=p.wall_seconds,
                          env=environment(device_name(device), command),
                          data_verified=bool(ds.verified and cfg.data.verify), shots=shot_rule(cfg.eval),
                          extra={"input": input_record(ds), "split_generated": ds.imbalance is not None,
                                 **({"pretrained": pretrained_record(pretrained)} if pretrained else {}),
                                 **_ema_record(cfg, trainer),
                                 "best_test_diagnostic": best_test_diagnostic(RunDir(trainer.run_dir).metrics_path)})


def best_test_diagnostic(metrics_path: Path) -> Optional[dict]:
    """The best test top-1 among the epochs evaluated for the curves, and its epoch: how much selecting on
    the test set (as several official codes do) would flatter the run. A diagnostic only, never a result:
    the run's numbers are its last epoch's. None when no epoch was evaluated."""
    best = None
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        top1 = row.get("top1") if isinstance(row, dict) else None
        if isinstance(top1, (int, float)) and (best is None or top1 > best["top1"]):
            best = {"top1": float(top1), "epoch": row.get("epoch")}
    if best is not None:
        best["note"] = "best of the evaluated epochs on the test set: a diagnostic, not a result (reported: last epoch)"
    return best


def _ema_record(cfg: C.Config, trainer: Trainer) -> dict:
    """``summary.json``'s EMA entries: the average's metrics under ``metrics_ema`` (the run's own metrics
    stay those of the trained weights), or nothing without train.ema_decay."""
    m = trainer.last_eval_ema
    if trainer.ema is None or m is None:
        return {}
    return {"ema_decay": cfg.train.ema_decay, "ema_updates": trainer.ema.updates,
            "metrics_ema": {k: m[k] for k in ("top1", "top5", "many", "medium", "few", "per_class", "ece")}}


#: the full report of the pretrained weights a run started from, in its run directory
PRETRAINED_FILE = "pretrained.json"


def pretrained_record(report: Optional[dict]) -> Optional[dict]:
    """``summary.json``'s ``pretrained``: the file, its sha256 and the counts (the lists are in pretrained.json);
    None for a run from random init."""
    if report is None:
        return None
    return {k: report.get(k) for k in ("path", "sha256", "format", "strict", "loaded", "backbone_tensors",
                                       "classifier_loaded", "missing_count", "mismatched_count", "unexpected_count")}


def input_record(ds: Dataset) -> dict:
    """What the network's input is (``summary.json``'s ``input``): enough to preprocess new images for
    ``longtail predict`` without the training data."""
    from longtail.data.base import ArraySplit

    return {"image_size": int(ds.image_size), "in_channels": int(ds.in_channels), "mean": [float(m) for m in ds.mean],
            "std": [float(v) for v in ds.std], "source": "memory" if isinstance(ds.train, ArraySplit) else "loader"}


def evaluate_run(run_dir: Path, overrides: list[str], echo=print, ema: bool = False) -> dict:
    """Re-evaluate a finished run from its config.yaml and model.safetensors; compare with summary.json.

    With ``ema`` the moving average of the weights (``model_ema.safetensors``) is evaluated instead and
    compared with the summary's ``metrics_ema``.

    Under torchrun every rank evaluates one contiguous chunk of the test split and the metric
    statistics are summed over ranks, so the metrics are those of the whole split; only rank 0 prints.
    """
    rd = RunDir(run_dir)
    cfg = C.load(rd.require_config(), overrides)
    resolve_device(cfg.device)  # a clear ConfigError before any process group is joined
    device = dist.init_from_env(cfg.device)
    try:
        return _evaluate_run(rd, overrides, device, echo if dist.is_main() else _silent, ema)
    finally:
        dist.cleanup()


def _evaluate_run(rd: RunDir, overrides: list[str], device: torch.device, echo, ema: bool = False) -> dict:
    cfg, pieces = load_run(rd.path, device, overrides, ema=ema)
    m = evaluate(pieces.network, pieces.method, pieces.eval_batches, pieces.dataset.train_counts,
                 num_classes=pieces.dataset.num_classes, device=device, amp=cfg.train.amp,
                 posthoc_tau=cfg.eval.posthoc_tau, ece_bins=cfg.eval.ece_bins,
                 channels_last=cfg.train.channels_last, shots=shot_rule(cfg.eval))
    if ema:
        echo("EMA weights (model_ema.safetensors):")
    echo(format_table(m))
    s = rd.read_summary()
    if s is not None and ema:  # the average's own record; the summary's main metrics are the weights'
        s = dict(s, **s["metrics_ema"]) if s.get("metrics_ema") else None
    if s is not None:
        if s.get("posthoc_tau", 0.0) != cfg.eval.posthoc_tau:
            echo(f"note: posthoc_tau {cfg.eval.posthoc_tau} differs from the run's {s.get('posthoc_tau')}")
        else:
            diffs = {k: (s.get(k), m[k]) for k in ("top1", "many", "medium", "few", "ece")
                     if not _close(s.get(k), m[k])}
            m["agrees_with_summary"] = not diffs
            echo("agrees with summary.json" if not diffs else f"differs from summary.json: {diffs}")
    return m


def _close(a, b, tol=1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol

