"""From a config to a finished run directory: the one place where the pieces are wired together.

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
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from longtail import config as C
from longtail.data.base import ArraySplit, Dataset
from longtail.data.build import AUG_DEFAULTS, build_dataset
from longtail.engine import distributed as dist
from longtail.engine.checkpoint import atomic_write_text, check_shapes, load_checkpoint
from longtail.engine.evaluator import format_table
from longtail.engine.logging import NullLogger, RunLogger
from longtail.engine.trainer import Trainer
from longtail.errors import CheckpointError, ConfigError, LongtailError
from longtail.methods import create_method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def git_commit() -> str:
    """The toolbox's git commit (with ``-dirty`` for local changes), or ``unknown`` outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


@dataclass
class Pieces:
    dataset: Dataset
    method: torch.nn.Module
    network: torch.nn.Module
    train_batches: object
    eval_batches: object


def aug_kwargs(cfg: C.Config, ds: Dataset) -> dict:
    """Keyword arguments of the view builders: the dataset's padding/flip unless the config sets them."""
    pad, flip = AUG_DEFAULTS.get(ds.name, (4, True))
    d = cfg.data
    return dict(image_size=ds.image_size, crop_padding=pad if d.crop_padding is None else d.crop_padding,
                flip=flip if d.flip is None else d.flip, cutout=d.cutout, randaugment_n=d.randaugment_n,
                randaugment_m=d.randaugment_m, randaugment_mstd=d.randaugment_mstd, mean=ds.mean, std=ds.std)


def _share() -> dict:
    return dict(rank=dist.rank(), world_size=dist.world_size())


def build_eval_batches(cfg: C.Config, ds: Dataset, device: torch.device):
    from longtail.data.augment import build_torchvision_transform, build_view
    from longtail.data.batches import EvalBatches
    from longtail.data.loader import LoaderEvalBatches

    kw = aug_kwargs(cfg, ds)
    if isinstance(ds.test, ArraySplit):
        return EvalBatches(ds.test.images, ds.test.labels, batch_size=cfg.eval.batch_size, device=device,
                           view=build_view("none", **kw), **_share())
    tf = build_torchvision_transform("none", train=False, resize=256, center_crop=224, **kw)
    return LoaderEvalBatches(ds.test, transform=tf, batch_size=cfg.eval.batch_size, device=device,
                             num_workers=cfg.data.num_workers, **_share())


def build_train_batches(cfg: C.Config, ds: Dataset, method, device: torch.device):
    from longtail.data.augment import build_torchvision_transform, build_view
    from longtail.data.batches import InMemoryBatches
    from longtail.data.loader import LoaderBatches
    from longtail.data.samplers import build_sampler

    d = cfg.data
    kw = aug_kwargs(cfg, ds)
    presets = method.view_presets()
    sampler = build_sampler(d.sampler, ds.train.labels, seed=cfg.train.seed, k=d.sampler_k,
                            total_epochs=cfg.train.epochs)
    source = d.source if d.source != "auto" else ("memory" if isinstance(ds.train, ArraySplit) else "loader")
    common = dict(batch_size=cfg.train.batch_size, sampler=sampler, device=device, seed=cfg.train.seed,
                  channels_last=cfg.train.channels_last, drop_last=cfg.train.drop_last, **_share())
    if source == "memory":
        if not isinstance(ds.train, ArraySplit):
            raise ConfigError(f"data.source=memory needs a small in-memory dataset; {ds.name} is read from files: "
                              f"use data.source=loader")
        built = {p: build_view(p, **kw) for p in dict.fromkeys(presets)}  # one object per preset: stacked
        return InMemoryBatches(ds.train.images, ds.train.labels, views=[built[p] for p in presets], **common)
    if isinstance(ds.train, ArraySplit):
        raise ConfigError("data.source=loader reads image files; this dataset is held in memory: use data.source=memory")
    tfs = [build_torchvision_transform(p, train=True, resize=256, center_crop=224, **kw) for p in presets]
    return LoaderBatches(ds.train, transforms=tfs, num_workers=d.num_workers, **common)


def build_pieces(cfg: C.Config, device: torch.device, dataset: Optional[Dataset] = None) -> Pieces:
    ds = dataset or build_dataset(cfg.data)
    counts = ds.train_counts
    method = create_method(cfg, counts)
    network = method.build_network(ds.num_classes, ds.in_channels)
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
    return Pieces(ds, method, network, build_train_batches(cfg, ds, method, device),
                  build_eval_batches(cfg, ds, device))


def check_method_name(name: str) -> None:
    from longtail.methods import list_methods
    import difflib

    if name not in list_methods():
        close = difflib.get_close_matches(name, list_methods(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"method.name: unknown method '{name}'{hint} Available: {', '.join(list_methods())}")


def _prepare_run_dir(cfg: C.Config, out: Optional[str], resume: Optional[str]) -> Path:
    if resume:
        return Path(resume)
    run_dir = Path(out) if out else Path(cfg.out_dir) / C.run_name(cfg)
    if (run_dir / "checkpoints" / "last.pt").exists() or (run_dir / "summary.json").exists():
        raise LongtailError(f"{run_dir} already holds a run. Continue it with 'longtail train --resume {run_dir}', "
                            f"or pick another folder with --out (nothing was changed).")
    return run_dir


def load_resume_config(resume: str, config_path: Optional[str], overrides: list[str]) -> C.Config:
    run_dir = Path(resume)
    path = Path(config_path) if config_path else run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no config.yaml (pass --config FILE)")
    return C.load(path, overrides)


def train(cfg: C.Config, *, out: Optional[str] = None, resume: Optional[str] = None,
          command: str = "", echo=print) -> Path:
    """Train one run end to end and return its directory."""
    C.validate(cfg)
    check_method_name(cfg.method.name)
    resolve_device(cfg.device)  # a clear ConfigError before any process group is joined
    device = dist.init_from_env(cfg.device)
    try:
        if not dist.is_main():
            echo = _silent
        run_dir = _prepare_run_dir(cfg, out, resume)
        # every rank reads the checkpoint (read-only) so all start from the same state
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt") if resume else None
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            seed_everything(cfg.train.seed, cfg.train.deterministic, device)  # same init on every rank
            out_dir = _train(cfg, run_dir, state, device, command, echo)
        finally:  # a library call must not leave the process in deterministic mode
            torch.use_deterministic_algorithms(was_deterministic)
        dist.barrier()  # rank 0 has written the outputs before any rank leaves the group
        return out_dir
    finally:
        dist.cleanup()


def _silent(*a, **k) -> None:
    pass


def _train(cfg: C.Config, run_dir: Path, state: Optional[dict], device: torch.device, command: str, echo) -> Path:
    if not cfg.data.verify:
        echo("warning: data.verify=false: checksums are not verified; summary.json records data_verified: false")
    if dist.is_distributed() and not dist.is_main():
        dist.barrier()  # rank 0 builds (and possibly downloads/extracts) the dataset first
    pieces = build_pieces(cfg, device)
    if dist.is_distributed() and dist.is_main():
        dist.barrier()
    ds = pieces.dataset
    if state is not None:
        check_shapes(pieces.network, state["model"], run_dir / "checkpoints" / "last.pt")
    from longtail.engine.trainer import compile_fn

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
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", C.dump(cfg))
        logger = RunLogger(run_dir)
    else:
        logger = NullLogger()
    trainer = Trainer(cfg, run_dir, network=pieces.network, method=pieces.method,
                      train_batches=pieces.train_batches, eval_batches=pieces.eval_batches,
                      train_counts=ds.train_counts, num_classes=ds.num_classes, device=device, logger=logger,
                      forward=forward, train_forward=train_forward)
    if state is not None:
        trainer.load_state_dict(state)
        echo(f"resuming {run_dir} at epoch {trainer.progress.epoch + 1}, step {trainer.progress.step_in_epoch}")
    echo(f"training {C.run_name(cfg)}: {ds.name} (imbalance {cfg.data.imbalance:g}, {len(ds.train)} train / "
         f"{len(ds.test)} test images, {ds.num_classes} classes), method {cfg.method.name}, "
         f"{cfg.model.backbone}, on {device_name(device)} -> {run_dir}")
    try:
        metrics = trainer.fit()
    finally:
        logger.close()
    if not dist.is_main():
        return run_dir
    write_outputs(run_dir, cfg, ds, pieces.network, metrics, trainer, device, command)
    echo(format_table(metrics))
    echo(f"run directory: {run_dir}  (report: longtail report {run_dir})")
    return run_dir


def write_outputs(run_dir: Path, cfg: C.Config, ds: Dataset, network, metrics: dict, trainer: Trainer,
                  device: torch.device, command: str) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = run_dir / ".model.safetensors.tmp"
    save_file(sd, str(tmp))
    os.replace(tmp, run_dir / "model.safetensors")
    p = trainer.progress
    summary = {
        "name": C.run_name(cfg), "dataset": ds.name, "imbalance": cfg.data.imbalance, "method": cfg.method.name,
        "backbone": cfg.model.backbone, "epochs": cfg.train.epochs,
        "completed_epochs": p.epoch + p.step_in_epoch / max(len(trainer.train_batches), 1),
        "steps": p.global_step, "batch_size": cfg.train.batch_size, "augment": cfg.data.augment,
        "sampler": cfg.data.sampler, "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
        "selection": "last", "posthoc_tau": cfg.eval.posthoc_tau,
        **{k: metrics[k] for k in ("top1", "top5", "many", "medium", "few", "per_class", "ece", "calibration")},
        "num_test": metrics.get("num_samples"),
        "train_counts": [int(c) for c in ds.train_counts], "class_names": list(ds.class_names),
        "shots": _shots(ds.train_counts), "wall_seconds": p.wall_seconds, "device": device_name(device),
        "torch": torch.__version__, "python": platform.python_version(), "commit": git_commit(),
        "data_verified": bool(ds.verified and cfg.data.verify), "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))


def _shots(counts) -> dict:
    from longtail.data.splits import shot_summary

    return shot_summary(counts)


def evaluate_run(run_dir: Path, overrides: list[str], echo=print) -> dict:
    """Re-evaluate a finished run from its config.yaml and model.safetensors; compare with summary.json.

    Under torchrun every rank evaluates one contiguous chunk of the test split and the metric
    statistics are summed over ranks, so the metrics are those of the whole split; only rank 0 prints.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise LongtailError(f"{run_dir} has no config.yaml: pass the folder of a longtail run")
    cfg = C.load(cfg_path, overrides)
    cfg.train.sync_bn = False  # evaluation normalises with the running statistics: nothing to synchronise
    resolve_device(cfg.device)  # a clear ConfigError before any process group is joined
    device = dist.init_from_env(cfg.device)
    try:
        return _evaluate_run(run_dir, cfg, device, echo if dist.is_main() else _silent)
    finally:
        dist.cleanup()


def _evaluate_run(run_dir: Path, cfg: C.Config, device: torch.device, echo) -> dict:
    from safetensors.torch import load_file

    pieces = build_pieces(cfg, device)
    weights = run_dir / "model.safetensors"
    if weights.is_file():
        try:
            sd = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{weights} is damaged ({e}); re-export it or retrain") from None
    else:
        sd = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    check_shapes(pieces.network, sd, weights)
    pieces.network.load_state_dict(sd)
    from longtail.engine.evaluator import evaluate

    m = evaluate(pieces.network, pieces.method, pieces.eval_batches, pieces.dataset.train_counts,
                 num_classes=pieces.dataset.num_classes, device=device, amp=cfg.train.amp,
                 posthoc_tau=cfg.eval.posthoc_tau, ece_bins=cfg.eval.ece_bins,
                 channels_last=cfg.train.channels_last)
    echo(format_table(m))
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
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
