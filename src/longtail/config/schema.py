"""The config sections: one typed dataclass per component.

A method's own parameters are not listed here: each method declares its parameter dataclass (a subclass
of :class:`MethodConfig`) next to its code and registers it (:data:`longtail.registry.METHODS`); the
``method`` section of a config is an instance of the selected method's dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    """Dataset, long-tailed split, sampling and augmentation."""

    name: str = "cifar10"  # a registered dataset: cifar10 | cifar100 | tinyimagenet | folder | imagenet_lt | ...
    root: Optional[str] = None  # else $LONGTAIL_DATA, else ~/.cache/longtail; folder: the image folder itself
    imbalance: float = 100.0
    profile: str = "exp"  # exp | step
    step_fraction: float = 0.5  # share of minority classes in the step profile
    split_seed: int = 0  # fixed at 0 by the protocol; separate from train.seed
    format: str = "auto"  # CIFAR: auto | python | binary
    download: bool = True
    verify: bool = True  # verify published checksums of local files (cached after the first time)
    augment: str = "standard"  # a registered preset: none | standard | autoaugment | randaugment | simclr | ...
    crop_padding: Optional[int] = None  # None: the dataset's default (CIFAR 4, Tiny 8, digits 1)
    flip: Optional[bool] = None  # None: the dataset's default (False for digits)
    cutout: int = 0  # cutout square size in pixels; 0 = off
    randaugment_n: int = 2
    randaugment_m: int = 10
    randaugment_mstd: float = 0.0  # std of the RandAugment magnitude (timm's mstd; BCL ImageNet: 0.5)
    sampler: str = "instance"  # a registered sampler: instance | class_balanced | sqrt | progressive
    sampler_k: int = 1  # class_balanced: consecutive samples per class visit
    source: str = "auto"  # auto | memory | loader
    num_workers: Optional[int] = None  # loader source only; None: one per usable CPU core, at most 8
    train_list: Optional[str] = None  # list-file datasets: ``path label`` lines
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    num_classes: Optional[int] = None  # list-file datasets: checked against the labels
    path_prefix: Optional[str] = None  # list-file datasets: replaces the lists' first path component
    check_images: bool = True  # file datasets: every image must decode before training (cached per file)
    image_size: Optional[int] = None  # network input size; None: the dataset's own (CIFAR 32, files 224)
    long_tailed: bool = False  # folder: subsample a balanced train/ folder with data.imbalance and data.profile


@dataclass
class ModelConfig:
    backbone: str = "resnet32"  # a registered backbone
    head: str = "linear"  # a registered classifier head: linear | cosine
    scale: float = 30.0  # cosine head scale sigma
    width: int = 16  # CIFAR ResNets: channels of the first stage


def param(default: Any, *, help: str = "", at_least: Optional[float] = None, above: Optional[float] = None,
          below: Optional[float] = None, choices: Optional[tuple] = None) -> Any:
    """A method parameter: its default, one line of help, and its constraints (checked by
    :meth:`MethodConfig.check`: ``>= at_least``, ``> above``, ``< below``, one of ``choices``)."""
    return field(default=default, metadata={"help": help, "at_least": at_least, "above": above, "below": below,
                                            "choices": choices})


@dataclass
class MethodConfig:
    """The ``method`` section: the method's name; each method's dataclass adds its own parameters, declared
    with :func:`param` so that their constraints are checked in one place."""

    name: str = "ce"

    def check(self) -> None:
        """Raise ConfigError ``method.<key> must be ...`` for the first parameter that breaks its constraint."""
        from longtail.errors import ConfigError

        for f in fields(self):
            m, v = f.metadata, getattr(self, f.name)
            rules = [(m.get("at_least"), lambda lo: v >= lo, ">= {}"), (m.get("above"), lambda lo: v > lo, "> {}"),
                     (m.get("below"), lambda hi: v < hi, "< {}")]
            for bound, ok, what in rules:
                if bound is not None and not ok(bound):
                    raise ConfigError(f"method.{f.name} must be {what.format(bound)} (got {v})")
            if m.get("choices") is not None and v not in m["choices"]:
                raise ConfigError(f"method.{f.name} must be one of {', '.join(m['choices'])} (got '{v}')")


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
    many_above: int = 100  # shot groups by training count: Many n > many_above
    few_below: int = 20  # Few n < few_below; Medium in between


@dataclass
class Config:
    name: Optional[str] = None  # run name; default: <dataset>_r<imbalance>_<method>_s<seed>
    out_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    plugins: list[str] = field(default_factory=list)  # modules or .py files that register methods, datasets...
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def run_name(cfg: Config) -> str:
    """``cfg.name``, else ``<dataset>_r<imbalance>_<method>_s<seed>``."""
    if cfg.name:
        return cfg.name
    r = int(cfg.data.imbalance) if float(cfg.data.imbalance).is_integer() else cfg.data.imbalance
    return f"{cfg.data.name}_r{r}_{cfg.method.name}_s{cfg.train.seed}"
