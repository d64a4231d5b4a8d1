"""The config sections: one typed dataclass per component.

A method's own parameters are not listed here: each method declares its parameter dataclass (a subclass
of :class:`MethodConfig`) next to its code and registers it (:data:`longtail.registry.METHODS`); the
``method`` section of a config is an instance of the selected method's dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def key(default: Any = None, *, help: str, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A config key: its default (or ``factory`` for a mutable one, e.g. a list) and one line of help,
    which ``longtail config show`` and the key reference print."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, *, help: str) -> Any:
    """A section of :class:`Config`: a dataclass of keys, with one line of help."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class DataConfig:
    """Dataset, long-tailed split, sampling and augmentation."""

    name: str = key("cifar10", help="a registered dataset: cifar10 | cifar100 | tinyimagenet | folder | "
                                     "imagenet_lt | ... (plugins add more)")
    root: Optional[str] = key(None, help="data folder; null: $LONGTAIL_DATA, else ~/.cache/longtail (folder: the "
                                         "image folder itself)")
    imbalance: float = key(100.0, help="imbalance factor of the training split: largest / smallest class (1 = "
                                       "balanced)")
    profile: str = key("exp", help="class sizes of the long-tailed split: exp (exponential) | step")
    step_fraction: float = key(0.5, help="step profile: share of minority classes")
    split_seed: int = key(0, help="seed of the long-tailed subsampling; fixed at 0 by the protocol, separate "
                                  "from train.seed")
    format: str = key("auto", help="CIFAR file format: auto | python | binary")
    download: bool = key(True, help="download the dataset when its files are missing")
    verify: bool = key(True, help="verify published checksums of local files (cached after the first time)")
    augment: str = key("standard", help="training augmentation, a registered preset: none | standard | "
                                        "autoaugment | randaugment | simclr | ...")
    crop_padding: Optional[int] = key(None, help="random-crop padding in pixels; null: the dataset's default "
                                                 "(CIFAR 4, Tiny 8, digits 1)")
    flip: Optional[bool] = key(None, help="random horizontal flip; null: the dataset's default (false for digits)")
    cutout: int = key(0, help="cutout square size in pixels; 0 = off")
    randaugment_n: int = key(2, help="RandAugment: operations per image")
    randaugment_m: int = key(10, help="RandAugment: magnitude, 0 to 10")
    randaugment_mstd: float = key(0.0, help="std of the RandAugment magnitude (timm's mstd; BCL ImageNet: 0.5)")
    sampler: str = key("instance", help="a registered training sampler: instance | class_balanced | sqrt | "
                                        "progressive")
    sampler_k: int = key(1, help="class_balanced sampler: consecutive samples per class visit")
    source: str = key("auto", help="where batches come from: auto | memory (decoded images held in memory) | "
                                   "loader (worker processes)")
    num_workers: Optional[int] = key(None, help="loader source only: worker processes; null: one per usable CPU "
                                                "core, at most 8")
    train_list: Optional[str] = key(None, help="list-file datasets: the training list, one 'path label' a line")
    val_list: Optional[str] = key(None, help="list-file datasets: the validation list (optional)")
    test_list: Optional[str] = key(None, help="list-file datasets: the test list")
    num_classes: Optional[int] = key(None, help="list-file datasets: number of classes, checked against the labels")
    path_prefix: Optional[str] = key(None, help="list-file datasets: replaces the lists' first path component")
    check_images: bool = key(True, help="file datasets: every image must decode before training (cached per file)")
    image_size: Optional[int] = key(None, help="network input size in pixels; null: the dataset's own (CIFAR 32, "
                                               "files 224)")
    long_tailed: bool = key(False, help="folder: subsample a balanced train/ folder with data.imbalance and "
                                        "data.profile")


@dataclass
class ModelConfig:
    """The network: backbone and classifier head, and fine-tuning from pretrained weights."""

    backbone: str = key("resnet32", help="a registered backbone, e.g. resnet32 (CIFAR) | resnet50 | resnext50_32x4d")
    head: str = key("linear", help="a registered classifier head: linear | cosine")
    scale: float = key(30.0, help="cosine head: scale sigma of the cosine logits")
    width: int = key(16, help="CIFAR ResNets: channels of the first stage")
    pretrained: Optional[str] = key(None, help="initialise the backbone from a local weights file (.pth, .pt, "
                                               ".safetensors, or a longtail run); null = random init")
    pretrained_strict: bool = key(True, help="every backbone tensor must be in model.pretrained with our shape; "
                                             "false: load those that fit and report the rest")
    pretrained_classifier: bool = key(False, help="also load model.pretrained's classifier (fc/head/classifier) "
                                                  "into ours when its shape matches")
    freeze_bn: bool = key(False, help="backbone BatchNorm layers stay in eval mode: running statistics frozen, "
                                      "affine parameters still trained")
    freeze_stages: int = key(0, help="freeze the backbone's stem and first k stages (no gradient, eval mode); "
                                     "0 = none")


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

    name: str = key("ce", help="a registered method: ce | focal | cb | ldam_drw | la | bcl | bbl | supcon | "
                               "proco | ... (its own keys follow it)")

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


def default_method_params() -> MethodConfig:
    """The default method's own parameter dataclass (``ce``'s: it has parameters of its own, e.g. label smoothing)."""
    from longtail.registry import METHODS

    return getattr(METHODS.get(MethodConfig().name), "Params", MethodConfig)()


@dataclass
class OptimConfig:
    """The optimiser (SGD or AdamW) and its learning-rate schedule."""

    lr: float = key(0.1, help="peak learning rate, for the global batch size train.batch_size")
    name: str = key("sgd", help="optimiser: sgd (momentum, weight decay added to the gradient) | adamw (Adam with "
                                "decoupled weight decay)")
    momentum: float = key(0.9, help="SGD momentum, in [0, 1) (sgd only)")
    nesterov: bool = key(False, help="Nesterov momentum (sgd only)")
    weight_decay: float = key(2e-4, help="weight decay: sgd adds weight_decay * w to the gradient (L2); adamw "
                                         "subtracts lr * weight_decay * w from the weights (decoupled)")
    betas: list[float] = key(help="adamw: coefficients of the running means of the gradient and its square",
                             factory=lambda: [0.9, 0.999])
    eps: float = key(1e-8, help="adamw: term added to the denominator for numerical stability")
    warmup_epochs: int = key(5, help="linear warm-up: lr * e / warmup_epochs for epochs e = 1..warmup_epochs "
                                     "(1-based); 0 = off")
    schedule: str = key("step", help="learning-rate schedule after warm-up: step | cosine | bcl_cosine | "
                                     "cosine_restarts | constant")
    milestones: list[int] = key(help="step schedule: 0-based epochs at which the lr is multiplied by gamma",
                                factory=lambda: [160, 180])
    gamma: float = key(0.01, help="step schedule: factor applied to the lr at each milestone")
    restart_period: int = key(10, help="cosine_restarts: epochs of the first cosine period, counted from the end of "
                                       "the warm-up")
    restart_mult: int = key(2, help="cosine_restarts: each period is this many times longer than the one before "
                                    "(1 = equal periods)")
    backbone_lr_scale: float = key(1.0, help="the backbone's lr is optim.lr times this (fine-tuning: e.g. 0.1); "
                                             "heads use optim.lr")
    grad_clip: Optional[float] = key(None, help="clip the gradient norm to this value; null = off")
    impl: str = key("auto", help="optimiser implementation: auto (fused on CUDA and CPU, torch's default "
                                 "elsewhere) | fused | foreach | for_loop")


@dataclass
class TrainConfig:
    """The training loop.

    Batch mixing (``mix`` ...) lives here, not in ``data``: the trainer applies it to each training batch
    after the batch source made its views, it changes the loss (label weights) and the training accuracy,
    and evaluation never sees it (longtail.mixing).
    """

    epochs: int = key(200, help="training epochs")
    batch_size: int = key(128, help="global batch size (split over the processes under torchrun)")
    seed: int = key(0, help="seed of initialisation, sampling and augmentation (not of the split: data.split_seed)")
    seeds: list[int] = key(help="train these seeds together as one stacked network, one run directory each "
                                "(e.g. [0, 1, 2]); [] = one run with train.seed", factory=list)
    max_steps: Optional[int] = key(None, help="stop after this many optimiser steps (smoke runs); null = all")
    deterministic: bool = key(False, help="deterministic torch algorithms only (slower); false: cuDNN autotuning on CUDA")
    amp: str = key("auto", help="mixed precision: auto (bf16 on CUDA) | bf16 | none")
    channels_last: bool = key(False, help="channels-last memory format for the network and its inputs")
    compile: bool = key(False, help="torch.compile the training step's forward + loss (one graph) and the eval "
                                    "forward")
    compile_mode: str = key("default", help="torch.compile mode: default | reduce-overhead (CUDA graphs) | "
                                            "max-autotune | max-autotune-no-cudagraphs")
    compile_backend: str = key("inductor", help="any torch.compile backend, e.g. aot_eager to debug")
    drop_last: bool = key(False, help="drop each epoch's last partial batch: every step has the same shapes")
    sync_bn: bool = key(False, help="SyncBatchNorm under torchrun on GPUs: BN statistics over the global batch")
    eval_every: int = key(10, help="evaluate the test set every N epochs for the curves (the last epoch always); "
                                   "0 = last epoch only")
    progress: bool = key(True, help="live progress bar on a terminal; false (or no terminal): one line per epoch")
    accumulate: int = key(1, help="gradient accumulation: each step's batch runs as this many micro-batches whose "
                                  "gradients add up to the full batch's; 1 = off")
    ema_decay: Optional[float] = key(None, help="keep an exponential moving average of the weights with this decay, "
                                               "e.g. 0.999, evaluated beside them; null = off")
    ema_warmup: bool = key(False, help="EMA: use decay min(ema_decay, (1 + n) / (10 + n)) at the n-th update, so the "
                                       "average forgets the first weights sooner")
    mix: str = key("none", help="batch mixing of single-view methods: none | mixup | cutmix | remix (mixup images, "
                                "labels rebalanced)")
    mix_alpha: float = key(1.0, help="batch mixing: alpha of the Beta(alpha, alpha) draw of the mixing ratio lambda")
    mix_prob: float = key(1.0, help="batch mixing: probability that a batch is mixed (else it trains unmixed)")
    remix_kappa: float = key(3.0, help="remix: count ratio n_a / n_b at or above which the label can go to the "
                                       "minority class")
    remix_tau: float = key(0.5, help="remix: the minority label is taken when its image share exceeds 1 - tau")
    mix_stop_epoch: Optional[int] = key(None, help="batch mixing: 0-based epoch from which batches are no longer "
                                                   "mixed; null: mix every epoch")


@dataclass
class EvalConfig:
    """Evaluation and its metrics."""

    posthoc_tau: float = key(0.0, help="post-hoc logit adjustment: predict argmax(s - tau * log prior); 0 = off")
    ece_bins: int = key(15, help="bins of the expected calibration error")
    batch_size: int = key(512, help="evaluation batch size")
    many_above: int = key(100, help="shot groups by training count: Many n > many_above")
    few_below: int = key(20, help="shot groups: Few n < few_below; Medium in between")


@dataclass
class Config:
    """A whole experiment: top-level keys and one section per component."""

    name: Optional[str] = key(None, help="run name; null: <dataset>_r<imbalance>_<method>_s<seed>")
    out_dir: str = key("runs", help="folder that receives the run folder <out_dir>/<name>")
    device: str = key("auto", help="auto | cpu | cuda | cuda:N")
    plugins: list[str] = key(help="modules or .py files that register methods, datasets, backbones, ...",
                             factory=list)
    data: DataConfig = section(DataConfig, help="dataset, long-tailed split, sampling and augmentation")
    model: ModelConfig = section(ModelConfig, help="the network: backbone and classifier head")
    method: MethodConfig = section(default_method_params, help="the training method and its own parameters")
    optim: OptimConfig = section(OptimConfig, help="the optimiser (SGD or AdamW) and its learning-rate schedule")
    train: TrainConfig = section(TrainConfig, help="the training loop")
    eval: EvalConfig = section(EvalConfig, help="evaluation and its metrics")


#: Keys that do not change what a run computes, and why: a finished run may be resumed (to no effect)
#: under other values of these, and ``compare`` leaves them out of a configuration's identity.
NEUTRAL_KEYS = {
    "name": "the run's name",
    "out_dir": "where runs are written",
    "device": "the device that ran it",
    "plugins": "where plugin code was imported from (the names it registers, e.g. method.name, are compared)",
    "data.root": "where the dataset lives",
    "data.download": "whether a missing dataset may be downloaded",
    "data.verify": "whether checksums are verified",
    "data.format": "the file format CIFAR is read from (the same images)",
    "data.num_workers": "loader processes",
    "data.check_images": "the decode check of image files before training",
    "data.path_prefix": "where the images of list files live",
    "train.progress": "the progress bar",
    "train.eval_every": "how often the curves evaluate (the reported metrics are the last epoch's)",
    "train.deterministic": "deterministic kernels (the same computation)",
    "train.compile": "torch.compile (the same computation)",
    "train.compile_mode": "torch.compile's mode",
    "train.compile_backend": "torch.compile's backend",
    "train.channels_last": "the memory layout of activations",
    "optim.impl": "the implementation of the same optimiser update (fused, foreach, for-loop)",
    "eval.batch_size": "the evaluation batch size",
}


def run_name(cfg: Config) -> str:
    """``cfg.name``, else ``<dataset>_r<imbalance>_<method>_s<seed>``; an image folder used as it is (its
    imbalance is the data's own) is named after its folder: ``<folder>_<method>_s<seed>``."""
    if cfg.name:
        return cfg.name
    r = int(cfg.data.imbalance) if float(cfg.data.imbalance).is_integer() else cfg.data.imbalance
    if cfg.data.name == "folder":
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(cfg.data.root or "folder").name)
        base = base.strip(".") or "folder"
        return f"{base}_r{r}_{cfg.method.name}_s{cfg.train.seed}" if cfg.data.long_tailed else \
            f"{base}_{cfg.method.name}_s{cfg.train.seed}"
    return f"{cfg.data.name}_r{r}_{cfg.method.name}_s{cfg.train.seed}"
