"""Decoupled stage 2 on cached features: cRT, LWS, τ-norm and post-hoc logit adjustment (METHODS §1).

Stage 2 works on the features of the frozen stage-1 backbone, extracted once in eval mode on the
normalise-only view (:mod:`longtail.features`). The backbone is never run in train mode, so its BN
statistics cannot move, and the source run's files are only read. Deviation [ours], the default
``source=features``: the original cRT/LWS feed *augmented* images through the frozen backbone at every
step; training on cached un-augmented features is much cheaper but sees each image in one view only.
``source=images`` does what the original does (stage 1's augmentation, backbone in eval mode under
no_grad); the test metrics always come from the cached test features.

Selection (PROTOCOL §5): cRT and LWS report the last stage-2 epoch. τ for τ-norm and post-hoc LA is
chosen by balanced (mean per-class) accuracy on the validation split when the dataset has one, else on
a class-stratified hold-out of the TRAIN features (:func:`longtail.features.holdout_indices`; the
stage-1 model was trained on those images, so the choice is biased towards small τ), or fixed with
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
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from longtail import config as C
from longtail.engine.checkpoint import atomic_write_text
from longtail.errors import ConfigError, LongtailError

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


def stage1_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], head: str,
                  scale: float = 30.0) -> torch.Tensor:
    """The stage-1 classifier's logits: linear W h + b, or cosine σ·normalize(h)·normalize(w_c).

    Shape:
        h: [B, D]; weight: [C, D]; bias: [C] or None -> [B, C].
    """
    if head == "cosine":
        return scale * F.linear(F.normalize(h, dim=1), F.normalize(weight, dim=1))
    return F.linear(h, weight, bias)


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """τ-norm rows: w̃_c = w_c / ‖w_c‖^τ (the bias is dropped by the caller). Shape: [C, D] -> [C, D]."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


class LWSHead(torch.nn.Module):
    """Learnable weight scaling: s_c = f_c·(w_c·h + b_c) with W, b frozen and f initialised to 1.

    Shape:
        h: [B, D] -> [B, C].
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.scales = torch.nn.Parameter(torch.ones(weight.shape[0], device=weight.device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scales * F.linear(h, self.weight, self.bias)

    def folded(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(f_c·w_c rows, f_c·b_c): the same classifier as one linear layer."""
        f = self.scales.detach()
        return f[:, None] * self.weight, None if self.bias is None else f * self.bias


def _predict(logit_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int = 4096) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([logit_fn(x[i:i + bs]).float() for i in range(0, len(x), bs)])


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class accuracy (percent) over the classes present in ``labels``. Shape: [N, C], [N]."""
    pred = logits.argmax(dim=1)
    accs = [(pred[labels == c] == c).float().mean().item() for c in torch.unique(labels).tolist()]
    return 100.0 * float(np.mean(accs))


def select_tau(make_logits: Callable[[float], torch.Tensor], labels: torch.Tensor, grid: list[float]):
    """(best τ, score per τ): the first τ of ``grid`` with the highest balanced accuracy."""
    scores = [balanced_accuracy(make_logits(t), labels) for t in grid]
    return grid[int(np.argmax(scores))], scores


def _metrics(logits: torch.Tensor, labels: torch.Tensor, counts: np.ndarray, ece_bins: int) -> dict:
    from longtail.metrics import MetricAccumulator

    acc = MetricAccumulator(logits.shape[1], ece_bins=ece_bins)
    for i in range(0, len(labels), 4096):
        acc.update(logits[i:i + 4096], labels[i:i + 4096])
    return acc.compute(counts)


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
    from types import SimpleNamespace

    from longtail.engine.run import build_train_batches

    bcfg = copy.deepcopy(src_cfg)
    bcfg.data.sampler, bcfg.data.sampler_k = "class_balanced", cfg.k
    bcfg.train.batch_size, bcfg.train.seed, bcfg.train.epochs = cfg.batch_size, cfg.seed, cfg.epochs
    bcfg.train.channels_last = False
    one_view = SimpleNamespace(view_presets=lambda: [src_cfg.data.augment])  # only the classifier's view
    batches = build_train_batches(bcfg, ds, one_view, device)
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
    # LWS: the official config applies the same weight decay to the scales f; we keep that.
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    head.train()
    for epoch in range(cfg.epochs):
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        total, steps, seen = 0.0, 0, None
        for h, y in batches(epoch):
            loss = F.cross_entropy(head(h), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
            counts = torch.bincount(y, minlength=num_classes)
            seen = counts if seen is None else seen + counts
        present = seen[seen > 0]
        log({"epoch": epoch, "lr": lr, "loss": total / max(steps, 1), "samples": int(seen.sum()),
             "class_samples_min": int(present.min()), "class_samples_max": int(present.max())})
    head.eval()


# ---------------------------------------------------------------------------------------------------
# the stage-2 run


def run_decouple(run_dir: str | Path, method: str, out_dir: str | Path, *, features_dir: Optional[str | Path] = None,
                 overrides: Optional[list[str]] = None, device: str = "auto", echo=print) -> Path:
    """Run one stage-2 method on a finished stage-1 run and write a normal run directory to ``out_dir``.

    Returns:
        ``out_dir``, holding config.yaml, decouple.yaml, model.safetensors, summary.json (with a
        ``stage2`` record) and, for crt/lws, metrics.jsonl (one line per stage-2 epoch).
    """
    from safetensors.torch import load_file

    from longtail.engine.run import device_name, git_commit, resolve_device
    from longtail.features import (extract_features, file_sha256, holdout_indices, load_feature_splits,
                                   read_info)

    if method not in METHODS:
        raise ConfigError(f"decouple method must be one of {', '.join(METHODS)} (got '{method}')")
    dcfg = check_config(C.load_dataclass(DecoupleConfig, None, overrides or []))
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model.safetensors").is_file():
        raise LongtailError(f"{run_dir} is not a finished longtail run (needs config.yaml and model.safetensors)")
    if (out_dir / "summary.json").exists():
        raise LongtailError(f"{out_dir} already holds a run; pick another folder with --out (nothing was changed)")
    cfg = C.load(run_dir / "config.yaml")
    if cfg.model.head == "cosine" and method in ("lws", "tau_norm"):
        raise LongtailError(f"{method} needs a linear stage-1 head but {run_dir} has a cosine head "
                            f"(model.head=cosine); use crt or posthoc_la")
    dev = resolve_device(device)
    t0 = time.time()
    if features_dir is None:
        features_dir = out_dir / "features"
        echo(f"extracting features of {run_dir} -> {features_dir}")
        splits = ("train", "val", "test") if cfg.data.val_list else ("train", "test")
        extract_features(run_dir, features_dir, splits=splits, batch_size=dcfg.extract_batch_size,
                         device=device, holdout_fraction=dcfg.holdout_fraction, holdout_seed=dcfg.seed)
    info = read_info(features_dir)
    if info.get("model_sha256") not in (None, file_sha256(run_dir / "model.safetensors")):
        raise LongtailError(f"the features in {features_dir} were extracted from another model than "
                            f"{run_dir}/model.safetensors; extract them again from this run")
    counts = np.asarray(info["class_counts"], dtype=np.int64)
    num_classes = len(counts)
    train_x, train_y = (torch.from_numpy(a).to(dev) for a in
                        load_feature_splits(features_dir, ["train"], num_classes)["train"])
    if not np.array_equal(np.bincount(train_y.cpu().numpy(), minlength=num_classes), counts):
        raise LongtailError(f"the train features in {features_dir} do not match the class counts in features.json")

    sd = load_file(str(run_dir / "model.safetensors"))
    W, b = sd["classifier.weight"].to(dev).float(), sd.get("classifier.bias")
    b = None if b is None else b.to(dev).float()
    if W.shape != (num_classes, train_x.shape[1]):
        raise LongtailError(f"stage-1 classifier is {tuple(W.shape)} but the features give {num_classes} classes "
                            f"of dimension {train_x.shape[1]}; extract features from this run")
    head_kind, scale = cfg.model.head, cfg.model.scale
    trains = method in ("crt", "lws")
    stage2 = {"method": method, "source_run": str(run_dir.resolve()), "features_dir": str(Path(features_dir)),
              "source": dcfg.source if trains else "features",
              "features": "frozen backbone in eval mode, normalise-only view (no augmentation)",
              "epochs": dcfg.epochs if trains else 0, "k": dcfg.k if trains else None, "tau": None,
              "tau_grid": None, "tau_scores": None, "selected_on": None, "config": dataclasses.asdict(dcfg)}
    out_dir.mkdir(parents=True, exist_ok=True)
    new_w, new_b, posthoc_tau, out_cfg = W, b, 0.0, copy.deepcopy(cfg)
    log_lines: list[str] = []

    def log(rec: dict) -> None:
        log_lines.append(json.dumps(rec))
        echo(f"stage 2 epoch {rec['epoch'] + 1}/{dcfg.epochs}: loss {rec['loss']:.4f} lr {rec['lr']:.4g}")

    network = None
    if trains and dcfg.source == "images":
        from longtail.features import load_source_run

        _, ds, _, network = load_source_run(run_dir, dev)
        batches = image_batches(cfg, ds, network, dcfg, dev)
    else:
        batches = feature_batches(train_x, train_y, dcfg)
    torch.manual_seed(dcfg.seed)
    if method == "crt":
        from longtail.models.heads import LinearHead

        head = LinearHead(train_x.shape[1], num_classes).to(dev)
        train_head(head, batches, num_classes, dcfg, log)
        new_w, new_b = head.weight.detach(), head.bias.detach()
        out_cfg.model.head = "linear"
    elif method == "lws":
        head = LWSHead(W, b).to(dev)
        train_head(head, batches, num_classes, dcfg, log)
        new_w, new_b = head.folded()
        stage2["scales"] = [float(v) for v in head.scales.detach().cpu()]
    else:
        if method == "tau_norm":
            def make(t: float, x: torch.Tensor) -> torch.Tensor:
                return _predict(lambda h: F.linear(h, tau_normalize(W, t)), x)
        else:
            prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=dev).log()
            base_cache: dict[int, torch.Tensor] = {}

            def make(t: float, x: torch.Tensor) -> torch.Tensor:
                key = id(x)
                if key not in base_cache:
                    base_cache[key] = _predict(lambda h: stage1_logits(h, W, b, head_kind, scale), x)
                return base_cache[key] - t * prior
        if dcfg.tau is not None:
            tau, stage2["selected_on"] = float(dcfg.tau), "fixed"
        else:
            if info.get("has_val"):  # the dataset has a val split: select there (a missing file is an error)
                sx, sy = (torch.from_numpy(a).to(dev) for a in
                          load_feature_splits(features_dir, ["val"], num_classes)["val"])
                stage2["selected_on"] = "val"
            else:
                _, vi = holdout_indices(train_y.cpu().numpy(), dcfg.holdout_fraction, dcfg.seed)
                vi_t = torch.from_numpy(vi).to(dev)
                sx, sy = train_x[vi_t], train_y[vi_t]
                stage2["selected_on"] = "train_holdout"
                stage2["holdout"] = {"fraction": dcfg.holdout_fraction, "seed": dcfg.seed, "size": int(len(vi)),
                                     "note": "held-out TRAIN images, seen by stage 1"}
            grid = tau_grid(dcfg)
            tau, scores = select_tau(lambda t: make(t, sx), sy, grid)
            stage2["tau_grid"], stage2["tau_scores"] = grid, scores
        stage2["tau"] = tau
        echo(f"{method}: tau = {tau:g} (selected on {stage2['selected_on']})")
        if method == "tau_norm":
            new_w, new_b = tau_normalize(W, tau), torch.zeros_like(W[:, 0])
        else:
            posthoc_tau = tau
            out_cfg.eval.posthoc_tau = tau

    # ---- only now is the test split read
    test_x, test_y = (torch.from_numpy(a).to(dev) for a in
                      load_feature_splits(features_dir, ["test"], num_classes)["test"])
    if train_x.shape[1] != test_x.shape[1]:
        raise LongtailError(f"train features have D={train_x.shape[1]} but test features D={test_x.shape[1]}")
    kind = "linear" if method != "posthoc_la" else head_kind
    logits = _predict(lambda h: stage1_logits(h, new_w, new_b, kind, scale), test_x)
    if posthoc_tau > 0:
        from longtail.losses import posthoc_adjust

        logits = posthoc_adjust(logits, counts, posthoc_tau)
    m = _metrics(logits, test_y, counts, dcfg.ece_bins)

    if network is not None:  # images mode: save what the frozen backbone holds now (tests check it is unchanged)
        sd = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    _write_outputs(out_dir, run_dir, out_cfg, sd, new_w, new_b, m, stage2, info, counts, log_lines,
                   posthoc_tau, time.time() - t0, device_name(dev), git_commit(), method, dcfg)
    from longtail.engine.evaluator import format_table

    echo(format_table(m))
    echo(f"run directory: {out_dir}")
    return out_dir


def _write_outputs(out_dir: Path, run_dir: Path, cfg: C.Config, sd: dict, w: torch.Tensor, b, m: dict,
                   stage2: dict, info: dict, counts: np.ndarray, log_lines: list[str], posthoc_tau: float,
                   wall: float, dev_name: str, commit: str, method: str, dcfg: DecoupleConfig) -> None:
    from safetensors.torch import save_file

    from longtail.data.splits import shot_summary

    src_path = run_dir / "summary.json"
    src = json.loads(src_path.read_text()) if src_path.is_file() else {}
    new_sd = {k: v.contiguous() for k, v in sd.items() if not k.startswith("classifier.")}
    new_sd["classifier.weight"] = w.detach().float().cpu().contiguous()
    if b is not None:
        new_sd["classifier.bias"] = b.detach().float().cpu().contiguous()
    tmp = out_dir / ".model.safetensors.tmp"
    save_file(new_sd, str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")
    cfg.name = f"{C.run_name(cfg)}_{method}"
    atomic_write_text(out_dir / "config.yaml", C.dump(cfg))
    atomic_write_text(out_dir / "decouple.yaml", yaml.safe_dump(dataclasses.asdict(dcfg), sort_keys=False))
    if log_lines:
        atomic_write_text(out_dir / "metrics.jsonl", "\n".join(log_lines) + "\n")
    selection = "best_val" if stage2["selected_on"] == "val" else "last"
    summary = {
        "name": cfg.name, "dataset": info.get("dataset", cfg.data.name), "imbalance": cfg.data.imbalance,
        "method": f"{src.get('method', cfg.method.name)}+{method}", "backbone": cfg.model.backbone,
        "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "augment": cfg.data.augment,
        "sampler": cfg.data.sampler, "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
        "selection": selection, "posthoc_tau": posthoc_tau,
        **{k: m[k] for k in ("top1", "top5", "many", "medium", "few", "per_class", "ece", "calibration")},
        "num_test": m.get("num_samples"), "train_counts": [int(c) for c in counts],
        "class_names": list(info.get("class_names") or src.get("class_names") or map(str, range(len(counts)))),
        "shots": shot_summary(counts), "wall_seconds": wall, "device": dev_name, "torch": torch.__version__,
        "python": platform.python_version(), "commit": commit,
        "data_verified": bool(src.get("data_verified", False)), "command": "",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "stage2": stage2,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
