"""Decoupled stage 2 on cached features: cRT, LWS, τ-norm and post-hoc logit adjustment (docs/methods.md).

Stage 2 works on the features of the frozen stage-1 backbone, extracted once in eval mode on the
normalise-only view (:mod:`longtail.stage2.features`). The backbone is never run in train mode, so its BN
statistics cannot move, and the source run's files are only read. Deviation [ours], the default
``source=features``: the original cRT/LWS feed *augmented* images through the frozen backbone at every
step; training on cached un-augmented features is much cheaper but sees each image in one view only.
``source=images`` does what the original does (stage 1's augmentation, backbone in eval mode under
no_grad); the test metrics always come from the cached test features.

Selection (docs/protocol.md): cRT and LWS report the last stage-2 epoch. τ for τ-norm and post-hoc LA is
chosen by balanced (mean per-class) accuracy on the validation split when the dataset has one, else on
a class-stratified hold-out of the TRAIN features (:func:`~longtail.stage2.features.holdout_indices`;
the stage-1 model was trained on those images, so the choice is biased towards small τ), or fixed with
``tau=...``. The test split is read only after τ is fixed.

Every result folds back into an ordinary network: the output directory holds a ``model.safetensors``
with the stage-1 backbone and the new classifier (LWS scales multiplied into W and b; τ-norm as a
linear head with zero bias), and a ``config.yaml`` that rebuilds it, so ``longtail eval`` works on it.

Heads: linear stage-1 heads support every method. Cosine heads (LDAM, BCL) support ``crt`` (the new head
is linear) and ``posthoc_la``; ``lws`` and ``tau_norm`` raise a LongtailError for them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from longtail import config as C
from longtail.errors import ConfigError, LongtailError
from longtail.models.heads import LWSHead, build_head, tau_normalize
from longtail.stage2 import features

__all__ = ["METHODS", "DecoupleConfig", "run_decouple", "select_tau", "LWSHead", "tau_normalize"]

METHODS = ("crt", "lws", "tau_norm", "posthoc_la")


@dataclass
class DecoupleConfig:
    """Stage-2 settings (cRT/LWS recipe of Decoupling, ImageNet-LT: batch 512, lr 0.2, cosine, wd 5e-4)."""

    epochs: int = 10  # sampler-epochs of n_max·C samples (cRT/LWS)
    batch_size: int = 512
    lr: float = 0.2  # cosine from lr to 0 over the epochs, stepped per epoch
    weight_decay: float = 5e-4
    momentum: float = 0.9
    k: int = 4  # class-aware sampler: consecutive samples per class visit
    tau: Optional[float] = None  # a fixed τ (τ-norm / post-hoc LA): no selection
    tau_min: float = 0.0
    tau_max: float = 2.0
    tau_step: float = 0.1
    holdout_fraction: float = 0.1  # train hold-out for τ when the dataset has no val split
    seed: int = 0
    extract_batch_size: int = 512
    ece_bins: int = 15
    source: str = "features"  # crt/lws: features (cached, un-augmented) | images (augmented, frozen backbone)


def check_config(cfg: DecoupleConfig) -> DecoupleConfig:
    bad = [(cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs})"),
           (cfg.batch_size >= 1, f"batch_size must be >= 1 (got {cfg.batch_size})"),
           (cfg.lr > 0, f"lr must be > 0 (got {cfg.lr})"), (cfg.k >= 1, f"k must be >= 1 (got {cfg.k})"),
           (cfg.weight_decay >= 0, f"weight_decay must be >= 0 (got {cfg.weight_decay})"),
           (0 <= cfg.momentum < 1, f"momentum must be in [0, 1) (got {cfg.momentum})"),
           (cfg.tau is None or cfg.tau >= 0, f"tau must be >= 0 or null (got {cfg.tau})"),
           (0 <= cfg.tau_min <= cfg.tau_max and cfg.tau_step > 0,
            f"need 0 <= tau_min <= tau_max and tau_step > 0 (got {cfg.tau_min}, {cfg.tau_max}, {cfg.tau_step})"),
           (cfg.source in ("features", "images"), f"source must be features or images (got '{cfg.source}')"),
           (0 < cfg.holdout_fraction < 1, f"holdout_fraction must be in (0, 1) (got {cfg.holdout_fraction})")]
    for ok, msg in bad:
        if not ok:
            raise ConfigError(f"decouple config: {msg}")
    return cfg


def tau_grid(cfg: DecoupleConfig) -> list[float]:
    n = int(math.floor((cfg.tau_max - cfg.tau_min) / cfg.tau_step + 1e-9)) + 1
    return [round(cfg.tau_min + i * cfg.tau_step, 10) for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# classifiers on features


def _head(kind: str, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: float) -> torch.nn.Module:
    """A classifier head of ``kind`` holding ``weight`` (and ``bias``): the same module the network uses."""
    head = build_head(kind, weight.shape[1], weight.shape[0], scale=scale).to(weight.device)
    sd = {"weight": weight} if kind != "linear" else {"weight": weight, "bias": bias if bias is not None
                                                      else torch.zeros_like(weight[:, 0])}
    head.load_state_dict(sd)
    return head.eval()


def _predict(logit_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([logit_fn(x[i:i + bs]).float() for i in range(0, len(x), bs)])


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class accuracy (percent) over the classes present in ``labels``. Shape: [N, C], [N]."""
    from longtail.metrics import confusion_matrix, per_class_accuracy

    cm = confusion_matrix(logits.argmax(dim=1), labels, logits.shape[1])
    return float(np.nanmean(per_class_accuracy(cm)))


def select_tau(make_logits: Callable[[float], torch.Tensor], labels: torch.Tensor, grid: list[float]):
    """(best τ, score per τ): the first τ of ``grid`` with the highest balanced accuracy."""
    scores = [balanced_accuracy(make_logits(t), labels) for t in grid]
    return grid[int(np.argmax(scores))], scores


def _metrics(logits: torch.Tensor, labels: torch.Tensor, counts: np.ndarray, ece_bins: int, shots=None) -> dict:
    from longtail.metrics import MetricAccumulator

    acc = MetricAccumulator(logits.shape[1], ece_bins=ece_bins, keep_confusion=False)
    for i in range(0, len(labels), 4096):
        acc.update(logits[i:i + 4096], labels[i:i + 4096])
    return acc.compute(counts, shots)


def feature_batches(x: torch.Tensor, y: torch.Tensor, cfg: DecoupleConfig) -> Callable[[int], Iterator]:
    """Class-aware batches of cached features: ``epoch -> iterator of (h [B, D], y [B])``."""
    from longtail.data.samplers import ClassBalancedSampler

    sampler = ClassBalancedSampler(y.cpu(), seed=cfg.seed, k=cfg.k)

    def epoch(e: int) -> Iterator:
        idx = sampler.epoch_indices(e).to(x.device)
        for s in range(0, len(idx), cfg.batch_size):
            b = idx[s:s + cfg.batch_size]
            yield x[b], y[b]
    return epoch


def image_batches(src_cfg: C.Config, ds, network: torch.nn.Module, cfg: DecoupleConfig,
                  device: torch.device) -> Callable[[int], Iterator]:
    """Class-aware batches of augmented training images (stage 1's augmentation) through the frozen
    backbone in eval mode, as in the original cRT/LWS: ``epoch -> iterator of (h [B, D], y [B])``."""
    from longtail.data.pipeline import train_batches

    data = dataclasses.replace(src_cfg.data, sampler="class_balanced", sampler_k=cfg.k)
    batches = train_batches(data, ds, [src_cfg.data.augment], batch_size=cfg.batch_size, seed=cfg.seed,
                            epochs=cfg.epochs, device=device)  # only the classifier's view
    network.eval()  # BN running statistics must not move

    def epoch(e: int) -> Iterator:
        for batch in batches.epoch(e):
            with torch.no_grad():
                h = network.forward_features(batch.views[0]).float()
            yield h, batch.labels
    return epoch


def train_head(head: torch.nn.Module, batches: Callable[[int], Iterator], num_classes: int, cfg: DecoupleConfig,
               log: Callable[[dict], None]) -> None:
    """CE on ``batches(epoch)`` (class-aware), SGD + momentum, cosine lr from cfg.lr to 0 stepped per epoch."""
    from longtail.engine.schedule import lr_at

    # LWS: the official config applies the same weight decay to the scales f; we keep that.
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = C.OptimConfig(lr=cfg.lr, warmup_epochs=0, schedule="cosine")
    head.train()
    for epoch in range(cfg.epochs):
        lr = lr_at(epoch, cfg.epochs, schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        total, steps, seen = 0.0, 0, torch.zeros(num_classes, dtype=torch.int64)
        for h, y in batches(epoch):
            loss = F.cross_entropy(head(h), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
            seen += torch.bincount(y.cpu(), minlength=num_classes)
        present = seen[seen > 0]
        log({"epoch": epoch, "lr": lr, "loss": total / max(steps, 1), "samples": int(seen.sum()),
             "class_samples_min": int(present.min()), "class_samples_max": int(present.max())})
    head.eval()


# ---------------------------------------------------------------------------------------------------
# the stage-2 run


def run_decouple(run_dir: str | Path, method: str, out_dir: str | Path, *, features_dir: Optional[str | Path] = None,
                 overrides: Optional[list[str]] = None, device: str = "auto", echo=print,
                 overwrite: bool = False) -> Path:
    """Run one stage-2 method on a finished stage-1 run and write a normal run directory to ``out_dir``
    (a folder that already holds a run is refused unless ``overwrite``).

    Returns:
        ``out_dir``, holding config.yaml, decouple.yaml, model.safetensors, summary.json (with a
        ``stage2`` record) and, for crt/lws, metrics.jsonl (one line per stage-2 epoch).
    """
    from longtail.engine.devices import resolve_device
    from longtail.rundir import RunDir

    if method not in METHODS:
        raise ConfigError(f"decouple method must be one of {', '.join(METHODS)} (got '{method}')")
    dcfg = check_config(C.load_dataclass(DecoupleConfig, None, overrides or []))
    src, out = RunDir(run_dir), RunDir(out_dir)
    if not src.config_path.is_file() or not src.weights_path.is_file():
        raise LongtailError(f"{src.path} is not a finished longtail run (needs config.yaml and model.safetensors)")
    out.refuse_existing(overwrite=overwrite)
    if features_dir is not None and Path(features_dir).resolve() == (out.path / "features").resolve():
        raise LongtailError(f"--features {features_dir} lies inside the output run folder {out.path}; "
                            f"pass features extracted elsewhere")
    cfg = C.load(src.config_path)
    if cfg.model.head == "cosine" and method in ("lws", "tau_norm"):
        raise LongtailError(f"{method} needs a linear stage-1 head but {src.path} has a cosine head "
                            f"(model.head=cosine); use crt or posthoc_la")
    if overwrite:
        out.clear()
    dev = resolve_device(device)
    t0 = time.time()
    if features_dir is None:
        features_dir = out.path / "features"
        echo(f"extracting features of {src.path} -> {features_dir}")
        splits = ("train", "val", "test") if cfg.data.val_list else ("train", "test")
        features.extract_features(src.path, features_dir, splits=splits, batch_size=dcfg.extract_batch_size,
                                  device=device, holdout_fraction=dcfg.holdout_fraction, holdout_seed=dcfg.seed)
    info = features.read_info(features_dir)
    if info.get("model_sha256") not in (None, features.file_sha256(src.weights_path)):
        raise LongtailError(f"the features in {features_dir} were extracted from another model than "
                            f"{src.weights_path}; extract them again from this run")
    counts = np.asarray(info["class_counts"], dtype=np.int64)
    num_classes = len(counts)

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = features.load_feature_splits(features_dir, [name], num_classes)[name]
        return torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

    train_x, train_y = split("train")
    if not np.array_equal(np.bincount(train_y.cpu().numpy(), minlength=num_classes), counts):
        raise LongtailError(f"the train features in {features_dir} do not match the class counts in features.json")
    sd = src.load_weights()
    W, b = sd["classifier.weight"].to(dev).float(), sd.get("classifier.bias")
    b = None if b is None else b.to(dev).float()
    if W.shape != (num_classes, train_x.shape[1]):
        raise LongtailError(f"stage-1 classifier is {tuple(W.shape)} but the features give {num_classes} classes "
                            f"of dimension {train_x.shape[1]}; extract features from this run")
    head_kind, scale, trains = cfg.model.head, cfg.model.scale, method in ("crt", "lws")
    stage2 = {"method": method, "source_run": str(src.path.resolve()), "features_dir": str(Path(features_dir)),
              "source": dcfg.source if trains else "features",
              "features": "frozen backbone in eval mode, normalise-only view (no augmentation)",
              "epochs": dcfg.epochs if trains else 0, "k": dcfg.k if trains else None, "tau": None,
              "tau_grid": None, "tau_scores": None, "selected_on": None, "config": dataclasses.asdict(dcfg)}
    out.create()
    new_w, new_b, posthoc_tau, out_cfg = W, b, 0.0, copy.deepcopy(cfg)
    log_rows: list[dict] = []

    def log(rec: dict) -> None:
        log_rows.append(rec)
        echo(f"stage 2 epoch {rec['epoch'] + 1}/{dcfg.epochs}: loss {rec['loss']:.4f} lr {rec['lr']:.4g}")

    network = None
    if trains and dcfg.source == "images":
        from longtail.engine.run import load_run

        _, pieces = load_run(src.path, dev)
        network = pieces.network
        batches = image_batches(cfg, pieces.dataset, network, dcfg, dev)
    else:
        batches = feature_batches(train_x, train_y, dcfg)
    torch.manual_seed(dcfg.seed)
    if method == "crt":
        head = build_head("linear", train_x.shape[1], num_classes).to(dev)
        train_head(head, batches, num_classes, dcfg, log)
        new_w, new_b = head.weight.detach(), head.bias.detach()
        out_cfg.model.head = "linear"
    elif method == "lws":
        head = LWSHead(W, b).to(dev)
        train_head(head, batches, num_classes, dcfg, log)
        new_w, new_b = head.folded()
        stage2["scales"] = [float(v) for v in head.scales.detach().cpu()]
    else:
        tau = _choose_tau(method, dcfg, W, b, head_kind, scale, counts, info, stage2, train_x, train_y, split, dev)
        echo(f"{method}: tau = {tau:g} (selected on {stage2['selected_on']})")
        if method == "tau_norm":
            new_w, new_b = tau_normalize(W, tau), torch.zeros_like(W[:, 0])
        else:
            posthoc_tau = out_cfg.eval.posthoc_tau = tau

    # ---- only now is the test split read
    test_x, test_y = split("test")
    if train_x.shape[1] != test_x.shape[1]:
        raise LongtailError(f"train features have D={train_x.shape[1]} but test features D={test_x.shape[1]}")
    logits = _predict(_head("linear" if method != "posthoc_la" else head_kind, new_w, new_b, scale), test_x)
    if posthoc_tau > 0:
        from longtail.losses import posthoc_adjust

        logits = posthoc_adjust(logits, counts, posthoc_tau)
    from longtail.engine.evaluator import shot_rule

    m = _metrics(logits, test_y, counts, dcfg.ece_bins, shot_rule(cfg.eval))
    if network is not None:  # images mode: save what the frozen backbone holds now (tests check it is unchanged)
        sd = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    _write_outputs(out, src, out_cfg, sd, new_w, new_b, m, stage2, info, counts, log_rows, time.time() - t0,
                   dev, method, dcfg)
    from longtail.engine.evaluator import format_table

    echo(format_table(m))
    echo(f"run directory: {out.path}")
    return out.path


def _choose_tau(method, dcfg, W, b, head_kind, scale, counts, info, stage2, train_x, train_y, split, dev) -> float:
    """τ for τ-norm or post-hoc LA: fixed, or the best balanced accuracy on val / a train hold-out."""
    from longtail.losses import log_prior

    if method == "tau_norm":
        def make(t: float, x: torch.Tensor) -> torch.Tensor:
            return _predict(lambda h: F.linear(h, tau_normalize(W, t)), x)
    else:
        prior = log_prior(counts).to(dev)
        stage1 = _head(head_kind, W, b, scale)
        base_cache: dict[int, torch.Tensor] = {}

        def make(t: float, x: torch.Tensor) -> torch.Tensor:
            if id(x) not in base_cache:
                base_cache[id(x)] = _predict(stage1, x)
            return base_cache[id(x)] - t * prior
    if dcfg.tau is not None:
        stage2["selected_on"] = "fixed"
        stage2["tau"] = float(dcfg.tau)
        return float(dcfg.tau)
    if info.get("has_val"):  # the dataset has a val split: select there (a missing file is an error)
        sx, sy = split("val")
        stage2["selected_on"] = "val"
    else:
        _, vi = features.holdout_indices(train_y.cpu().numpy(), dcfg.holdout_fraction, dcfg.seed)
        vi_t = torch.from_numpy(vi).to(dev)
        sx, sy = train_x[vi_t], train_y[vi_t]
        stage2["selected_on"] = "train_holdout"
        stage2["holdout"] = {"fraction": dcfg.holdout_fraction, "seed": dcfg.seed, "size": int(len(vi)),
                             "note": "held-out TRAIN images, seen by stage 1"}
    grid = tau_grid(dcfg)
    tau, scores = select_tau(lambda t: make(t, sx), sy, grid)
    stage2["tau_grid"], stage2["tau_scores"], stage2["tau"] = grid, scores, tau
    return tau


def _write_outputs(out, src, cfg: C.Config, sd: dict, w: torch.Tensor, b, m: dict, stage2: dict, info: dict,
                   counts: np.ndarray, log_rows: list[dict], wall: float, dev: torch.device, method: str,
                   dcfg: DecoupleConfig) -> None:
    from longtail.engine.devices import device_name
    from longtail.data.splits import ShotRule
    from longtail.rundir import environment, summary_record

    src_summary = src.read_summary() or {}
    new_sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    new_sd["classifier.weight"] = w.detach().float()
    if b is not None:
        new_sd["classifier.bias"] = b.detach().float()
    out.write_weights(new_sd)
    cfg.name = f"{C.run_name(cfg)}_{method}"
    out.write_config(C.dump(cfg))
    out.write_text("decouple.yaml", yaml.safe_dump(dataclasses.asdict(dcfg), sort_keys=False))
    if log_rows:
        out.write_metrics(log_rows)
    tags = {"dataset": info.get("dataset", cfg.data.name), "imbalance": info.get("imbalance", cfg.data.imbalance),
            "method": f"{src_summary.get('method', cfg.method.name)}+{method}", "backbone": cfg.model.backbone,
            "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "augment": cfg.data.augment,
            "sampler": cfg.data.sampler, "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
            "selection": "best_val" if stage2["selected_on"] == "val" else "last",
            "posthoc_tau": cfg.eval.posthoc_tau}
    names = info.get("class_names") or src_summary.get("class_names") or list(map(str, range(len(counts))))
    out.write_summary(summary_record(kind="decouple", name=cfg.name, tags=tags, metrics=m, train_counts=counts,
                                     class_names=names, wall_seconds=wall, env=environment(device_name(dev)),
                                     data_verified=bool(src_summary.get("data_verified", False)),
                                     extra={"stage2": stage2, **({"input": src_summary["input"]}
                                                                 if "input" in src_summary else {})},
                                     shots=ShotRule.of(cfg.eval.__dict__)))

