"""Typed experiment configuration.

A config is a tree of dataclasses, one per section. YAML files are read with ``yaml.safe_load`` and may
give any subset of keys; dotted overrides (``optim.lr=0.05``) are parsed as YAML scalars and converted
by the field's declared type, never evaluated. Unknown keys are errors that name the nearest valid key.
This module knows nothing about torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from longtail.errors import ConfigError

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagenet_lt", "places_lt", "inat2018")
BASELINE_METHODS = ("ce", "focal", "cb", "ldam_drw", "la")  # more register in longtail.methods
AUGMENTS = ("none", "standard", "autoaugment", "randaugment", "simclr", "simclr_rand")
SAMPLERS = ("instance", "class_balanced", "sqrt", "progressive")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    """Dataset, long-tailed split, sampling and augmentation."""

    name: str = "cifar10"
    root: Optional[str] = None  # else $LONGTAIL_DATA, else ~/.cache/longtail
    imbalance: float = 100.0
    profile: str = "exp"  # exp | step
    step_fraction: float = 0.5  # share of minority classes in the step profile
    split_seed: int = 0  # fixed at 0 by the protocol; separate from train.seed
    format: str = "auto"  # CIFAR: auto | python | binary
    download: bool = True
    verify: bool = True  # verify published checksums of local files (cached after the first time)
    augment: str = "standard"  # none | standard | autoaugment | randaugment | simclr | simclr_rand
    crop_padding: Optional[int] = None  # None: the dataset's default (CIFAR 4, Tiny 8, digits 1)
    flip: Optional[bool] = None  # None: the dataset's default (False for digits)
    cutout: int = 0  # cutout square size in pixels; 0 = off
    randaugment_n: int = 2
    randaugment_m: int = 10
    randaugment_mstd: float = 0.0  # std of the RandAugment magnitude (timm's mstd; BCL ImageNet: 0.5)
    sampler: str = "instance"  # instance | class_balanced | sqrt | progressive
    sampler_k: int = 1  # class_balanced: consecutive samples per class visit
    source: str = "auto"  # auto | memory | loader
    num_workers: int = 4  # loader source only
    train_list: Optional[str] = None  # list-file datasets: ``path label`` lines
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    num_classes: Optional[int] = None  # list-file datasets: checked against the labels
    path_prefix: Optional[str] = None  # list-file datasets: replaces the lists' first path component


@dataclass
class ModelConfig:
    backbone: str = "resnet32"
    head: str = "linear"  # linear | cosine
    scale: float = 30.0  # cosine head scale sigma
    width: int = 16  # CIFAR ResNets: channels of the first stage


@dataclass
class MethodConfig:
    name: str = "ce"
    focal_gamma: float = 1.0
    focal_parity: str = "default"  # default | ldam
    cb_beta: float = 0.9999
    cb_loss: str = "ce"  # ce | focal
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    drw_epoch: int = 160  # 0-based epoch at which DRW switches on
    drw_beta: float = 0.9999
    la_tau: float = 1.0
    # contrastive methods (bcl, supcon, bbl): L = alpha * LA-CE(view 0) + beta * contrastive(views 1, 2)
    temperature: float = 0.1
    alpha: float = 2.0
    beta: float = 0.6
    proj_hidden: int = 512  # projection / prototype MLP: d -> proj_hidden -> proj_dim
    proj_dim: int = 128
    cl_views: str = "sim-sim"  # sim-sim | sim-rand | rand-rand (views 1 and 2)
    class_averaging: bool = True  # BCL ablation switches (METHODS §2.3)
    class_complement: bool = True
    # BBL (our reconstruction; docs/methods/bbl.md)
    bbl_lambda: float = 1.0  # weight of the local-balance term
    bbl_gamma: float = 0.5  # exponent of the global class weight Omega
    bbl_global_mode: str = "reweight"  # reweight | logit_adjust
    bbl_kappa: float = 1.0  # logit_adjust mode: kappa * log(prior) on the centre logits
    bbl_variant: str = "r1"  # r1 | r2 | r3 | r4
    bbl_local_repulsion_only: bool = False
    bbl_r2_batch_positives: bool = False
    bbl_queue_size: int = 1024  # r4


@dataclass
class OptimConfig:
    lr: float = 0.1  # for the global batch size train.batch_size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    warmup_epochs: int = 5  # linear warm-up: lr * e / warmup for e = 1..warmup (1-based)
    schedule: str = "step"  # step | cosine | bcl_cosine | constant
    milestones: list[int] = field(default_factory=lambda: [160, 180])  # 0-based epochs
    gamma: float = 0.01  # step factor applied at each milestone
    grad_clip: Optional[float] = None
    impl: str = "auto"  # auto (fused on CUDA and CPU, torch's default elsewhere) | fused | foreach | for_loop


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    seed: int = 0
    max_steps: Optional[int] = None  # stop after this many optimiser steps (smoke runs)
    deterministic: bool = False
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | none
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step's forward + loss (one graph) and the eval forward
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_backend: str = "inductor"  # any torch.compile backend, e.g. aot_eager to debug
    drop_last: bool = False  # drop each epoch's last partial batch: every step has the same shapes
    sync_bn: bool = False  # SyncBatchNorm under torchrun on GPUs: BN statistics over the global batch
    eval_every: int = 10  # evaluate the test set every N epochs for the curves; the last epoch always
    progress: bool = True


@dataclass
class EvalConfig:
    posthoc_tau: float = 0.0  # post-hoc logit adjustment: argmax(s - tau * log prior)
    ece_bins: int = 15
    batch_size: int = 512


@dataclass
class Config:
    name: Optional[str] = None  # run name; default: <dataset>_r<imbalance>_<method>_s<seed>
    out_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------------
# key handling


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. ``optim.lr``."""
    out = []
    for name, tp in _field_types(cls).items():
        key = prefix + name
        if _is_dataclass_type(tp):
            out.extend(all_keys(tp, key + "."))
        else:
            out.append(key)
    return out


#: common names from other codebases -> our key's last component
_ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
            "epoch": "epochs", "imb_factor": "imbalance", "imbalance_ratio": "imbalance", "arch": "backbone",
            "loss": "name", "scheduler": "schedule", "lr_schedule": "schedule", "dataset": "name"}


def _unknown_key(key: str, root: type = Config) -> ConfigError:
    keys = all_keys(root)
    section, _, leaf = key.rpartition(".")
    same = [k for k in keys if k.rpartition(".")[0] == section]
    close: list[str] = []
    if same:  # the section exists: look for the leaf among its keys, aliases first
        leaves = {k.rpartition(".")[2]: k for k in same}
        if _ALIASES.get(leaf) in leaves:
            close = [leaves[_ALIASES[leaf]]]
        else:
            m = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
            close = [leaves[m[0]]] if m else []
    if not close:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        by_leaf = {k.rpartition(".")[2]: k for k in keys}
        m = difflib.get_close_matches(_ALIASES.get(leaf, leaf), list(by_leaf), n=1, cutoff=0.7)
        close = [by_leaf[m[0]]] if m else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value to the declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _convert(key, value, args[0])
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_convert(key, v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer (got {value!r})")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer (got {value!r})")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number (got {value!r})")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number (got {value!r})")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string (got {value!r})")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - internal


def _apply_dict(obj: Any, data: dict, prefix: str = "", root: type = Config) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix.rstrip('.') or '<top>'}' must be a mapping (got {data!r})")
    types_ = _field_types(type(obj))
    for k, v in data.items():
        key = prefix + str(k)
        if k not in types_:
            raise _unknown_key(key, root)
        tp = types_[k]
        if _is_dataclass_type(tp):
            _apply_dict(getattr(obj, k), v if v is not None else {}, key + ".", root)
        else:
            setattr(obj, k, _convert(key, v, tp))


def set_key(cfg: Any, key: str, raw: str) -> None:
    """Apply one dotted override to a config dataclass, ``raw`` being the text after ``=``."""
    parts = key.split(".")
    obj: Any = cfg
    root = type(cfg)
    for i, p in enumerate(parts):
        types_ = _field_types(type(obj))
        if p not in types_:
            raise _unknown_key(key, root)
        tp = types_[p]
        if i == len(parts) - 1:
            if _is_dataclass_type(tp):
                raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. '{all_keys(tp, key + '.')[0]}=...'")
            if tp is str or typing.get_args(tp) == (str, type(None)):
                value: Any = raw
            else:
                try:
                    value = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError:
                    value = raw
            setattr(obj, p, _convert(key, value, tp))
            return
        if not _is_dataclass_type(tp):
            raise _unknown_key(key, root)
        obj = getattr(obj, p)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like KEY=VALUE, e.g. optim.lr=0.05")
        key, raw = ov.split("=", 1)
        set_key(cfg, key.strip(), raw.strip())
    return cfg


def from_dict(data: dict) -> Config:
    cfg = Config()
    _apply_dict(cfg, data or {})
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply overrides and validate."""
    return validate(load_dataclass(Config, path, overrides))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------------------------------
# validation


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)} (got '{value}'{hint})")


def validate(cfg: Config) -> Config:
    """Check every value; raise ConfigError naming the key and the fix."""
    d, o, t, m, e = cfg.data, cfg.optim, cfg.train, cfg.method, cfg.eval
    _choice("data.name", d.name, DATASETS)
    _check(d.imbalance >= 1, f"data.imbalance must be >= 1 (got {d.imbalance}); 1 means balanced")
    _choice("data.profile", d.profile, ("exp", "step"))
    _check(0 <= d.step_fraction <= 1, f"data.step_fraction must be in [0, 1] (got {d.step_fraction})")
    _choice("data.format", d.format, ("auto", "python", "binary"))
    _choice("data.augment", d.augment, AUGMENTS)
    _choice("data.sampler", d.sampler, SAMPLERS)
    _choice("data.source", d.source, ("auto", "memory", "loader"))
    _check(d.sampler_k >= 1, f"data.sampler_k must be >= 1 (got {d.sampler_k})")
    _check(d.cutout >= 0, f"data.cutout must be >= 0 pixels (got {d.cutout})")
    _check(d.crop_padding is None or d.crop_padding >= 0, f"data.crop_padding must be >= 0 (got {d.crop_padding})")
    _check(d.randaugment_mstd >= 0, f"data.randaugment_mstd must be >= 0 (got {d.randaugment_mstd})")
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0 (got {d.num_workers})")
    _check(0 <= d.randaugment_m <= 10 and d.randaugment_n >= 0,
           f"data.randaugment_n must be >= 0 and data.randaugment_m in [0, 10] (got {d.randaugment_n}, {d.randaugment_m})")
    _check(cfg.model.head in ("linear", "cosine"), f"model.head must be linear or cosine (got '{cfg.model.head}')")
    _check(cfg.model.scale > 0, f"model.scale must be > 0 (got {cfg.model.scale})")
    _check(bool(m.name), "method.name must name a method, e.g. ce (see longtail.methods.list_methods())")
    _check(m.focal_gamma >= 0, f"method.focal_gamma must be >= 0 (got {m.focal_gamma})")
    _choice("method.focal_parity", m.focal_parity, ("default", "ldam"))
    _check(0 <= m.cb_beta < 1, f"method.cb_beta must be in [0, 1) (got {m.cb_beta})")
    _check(0 <= m.drw_beta < 1, f"method.drw_beta must be in [0, 1) (got {m.drw_beta})")
    _choice("method.cb_loss", m.cb_loss, ("ce", "focal"))
    _check(m.ldam_max_margin >= 0, f"method.ldam_max_margin must be >= 0 (got {m.ldam_max_margin})")
    _check(m.ldam_scale > 0, f"method.ldam_scale must be > 0 (got {m.ldam_scale})")
    _check(m.drw_epoch >= 0, f"method.drw_epoch must be >= 0 (got {m.drw_epoch})")
    _check(m.temperature > 0, f"method.temperature must be > 0 (got {m.temperature})")
    _check(m.alpha >= 0 and m.beta >= 0, f"method.alpha and method.beta must be >= 0 (got {m.alpha}, {m.beta})")
    _check(m.proj_hidden >= 1 and m.proj_dim >= 1, "method.proj_hidden and method.proj_dim must be >= 1")
    _choice("method.cl_views", m.cl_views, ("sim-sim", "sim-rand", "rand-rand"))
    _check(m.bbl_lambda >= 0, f"method.bbl_lambda must be >= 0 (got {m.bbl_lambda})")
    _check(m.bbl_gamma >= 0, f"method.bbl_gamma must be >= 0 (got {m.bbl_gamma})")
    _choice("method.bbl_global_mode", m.bbl_global_mode, ("reweight", "logit_adjust"))
    _choice("method.bbl_variant", m.bbl_variant, ("r1", "r2", "r3", "r4"))
    _check(m.bbl_queue_size >= 1, f"method.bbl_queue_size must be >= 1 (got {m.bbl_queue_size})")
    _check(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    _check(not o.nesterov or o.momentum > 0, "optim.nesterov needs optim.momentum > 0")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    _check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    _choice("optim.schedule", o.schedule, ("step", "cosine", "bcl_cosine", "constant"))
    _check(o.gamma > 0, f"optim.gamma must be > 0 (got {o.gamma})")
    _check(all(x >= 0 for x in o.milestones), f"optim.milestones must be >= 0 (got {o.milestones})")
    _check(o.grad_clip is None or o.grad_clip > 0, f"optim.grad_clip must be > 0 or null (got {o.grad_clip})")
    _choice("optim.impl", o.impl, ("auto", "fused", "foreach", "for_loop"))
    _check(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    _check(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1 or null (got {t.max_steps})")
    _choice("train.amp", t.amp, ("auto", "bf16", "none"))
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    _check(bool(t.compile_backend), "train.compile_backend must name a torch.compile backend, e.g. inductor")
    _check(t.eval_every >= 0, f"train.eval_every must be >= 0 (got {t.eval_every})")
    _check(e.posthoc_tau >= 0, f"eval.posthoc_tau must be >= 0 (got {e.posthoc_tau})")
    _check(e.ece_bins >= 1, f"eval.ece_bins must be >= 1 (got {e.ece_bins})")
    _check(e.batch_size >= 1, f"eval.batch_size must be >= 1 (got {e.batch_size})")
    dev = cfg.device
    _check(
        dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
        f"device must be auto, cpu, cuda or cuda:N (got '{dev}')",
    )
    if d.name in ("imagenet_lt", "places_lt", "inat2018"):
        _check(d.train_list is not None and d.test_list is not None,
               f"data.name={d.name} reads list files: set data.train_list and data.test_list (lines 'path label')")
    return cfg


def run_name(cfg: Config) -> str:
    if cfg.name:
        return cfg.name
    r = int(cfg.data.imbalance) if float(cfg.data.imbalance).is_integer() else cfg.data.imbalance
    return f"{cfg.data.name}_r{r}_{cfg.method.name}_s{cfg.train.seed}"


def load_dataclass(cls: type, path: Optional[str | Path] = None, overrides: Optional[list[str]] = None):
    """Load any config dataclass (e.g. a stage's own config) from YAML + dotted overrides, with the
    same typed conversion and nearest-key errors as :func:`load` (without its validation)."""
    obj = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        _apply_dict(obj, data, root=cls)
    return apply_overrides(obj, overrides or [])
