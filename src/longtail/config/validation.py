"""Checking a config: every value, with an error that names the key and the fix.

Names (dataset, augmentation preset, sampler, backbone, head, method) are checked against the registries,
so entries added by plugins are valid; the method's own parameters are checked by its dataclass.
"""

from __future__ import annotations

import difflib

from longtail.config.schema import COMPILE_MODES, Config
from longtail.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _choice(key: str, value: str, choices) -> None:
    choices = tuple(choices)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)} (got '{value}'{hint})")


def validate(cfg: Config) -> Config:
    """Check every value; raise ConfigError naming the key and the fix."""
    from longtail.registry import BACKBONES, DATASETS, HEADS, METHODS, PRESETS, SAMPLERS

    d, o, t, e = cfg.data, cfg.optim, cfg.train, cfg.eval
    _choice("data.name", d.name, DATASETS.names())
    _check(d.imbalance >= 1, f"data.imbalance must be >= 1 (got {d.imbalance}); 1 means balanced")
    _choice("data.profile", d.profile, ("exp", "step"))
    _check(0 <= d.step_fraction <= 1, f"data.step_fraction must be in [0, 1] (got {d.step_fraction})")
    _choice("data.format", d.format, ("auto", "python", "binary"))
    _choice("data.augment", d.augment, PRESETS.names())
    _choice("data.sampler", d.sampler, SAMPLERS.names())
    _choice("data.source", d.source, ("auto", "memory", "loader"))
    _check(d.sampler_k >= 1, f"data.sampler_k must be >= 1 (got {d.sampler_k})")
    _check(d.cutout >= 0, f"data.cutout must be >= 0 pixels (got {d.cutout})")
    _check(d.crop_padding is None or d.crop_padding >= 0, f"data.crop_padding must be >= 0 (got {d.crop_padding})")
    _check(d.randaugment_mstd >= 0, f"data.randaugment_mstd must be >= 0 (got {d.randaugment_mstd})")
    _check(d.num_workers is None or d.num_workers >= 0, f"data.num_workers must be >= 0 or null (got {d.num_workers})")
    _check(d.image_size is None or d.image_size >= 8, f"data.image_size must be >= 8 pixels or null (got {d.image_size})")
    _check(0 <= d.randaugment_m <= 10 and d.randaugment_n >= 0,
           f"data.randaugment_n must be >= 0 and data.randaugment_m in [0, 10] (got {d.randaugment_n}, {d.randaugment_m})")
    _choice("model.head", cfg.model.head, HEADS.names())
    BACKBONES.get(cfg.model.backbone)  # a ConfigError naming the closest backbone
    _check(cfg.model.scale > 0, f"model.scale must be > 0 (got {cfg.model.scale})")
    m = cfg.model
    _check(m.freeze_stages >= 0, f"model.freeze_stages must be >= 0 (got {m.freeze_stages}); 0 freezes nothing")
    _check(m.pretrained is None or bool(str(m.pretrained).strip()),
           "model.pretrained must be a weights file or null (got an empty string)")
    _check(bool(cfg.method.name), "method.name must name a method, e.g. ce (see longtail.methods.list_methods())")
    method = METHODS.get(cfg.method.name)
    if not isinstance(cfg.method, getattr(method, "Params", type(cfg.method))):
        raise ConfigError(f"the method section holds {type(cfg.method).__name__}, not the parameters of "
                          f"method '{cfg.method.name}'; set method.name through the config or an override")
    check = getattr(cfg.method, "check", None)
    if check is not None:
        check()
    _choice("optim.name", o.name, ("sgd", "adamw"))
    _check(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    _check(not o.nesterov or o.momentum > 0, "optim.nesterov needs optim.momentum > 0")
    _check(not o.nesterov or o.name == "sgd", f"optim.nesterov applies to optim.name=sgd only (got {o.name})")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
           f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999] (got {o.betas})")
    _check(o.eps > 0, f"optim.eps must be > 0 (got {o.eps})")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    _check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    _choice("optim.schedule", o.schedule, ("step", "cosine", "bcl_cosine", "cosine_restarts", "constant"))
    _check(o.restart_period >= 1, f"optim.restart_period must be >= 1 epoch (got {o.restart_period})")
    _check(o.restart_mult >= 1, f"optim.restart_mult must be >= 1 (got {o.restart_mult}); 1 = equal periods")
    _check(o.gamma > 0, f"optim.gamma must be > 0 (got {o.gamma})")
    _check(o.backbone_lr_scale > 0, f"optim.backbone_lr_scale must be > 0 (got {o.backbone_lr_scale}); to keep "
                                    f"the backbone fixed use model.freeze_stages")
    _check(all(x >= 0 for x in o.milestones), f"optim.milestones must be >= 0 (got {o.milestones})")
    _check(o.grad_clip is None or o.grad_clip > 0, f"optim.grad_clip must be > 0 or null (got {o.grad_clip})")
    _choice("optim.impl", o.impl, ("auto", "fused", "foreach", "for_loop"))
    _check(t.epochs >= 1, f"train.epochs must be >= 1 (got {t.epochs})")
    _check(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    _check(all(isinstance(x, int) and x >= 0 for x in t.seeds) and len(set(t.seeds)) == len(t.seeds),
           f"train.seeds must be distinct integers >= 0 (got {t.seeds})")
    _check(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1 or null (got {t.max_steps})")
    _check(t.accumulate >= 1, f"train.accumulate must be >= 1 (got {t.accumulate}); 1 = no accumulation")
    _check(t.batch_size % t.accumulate == 0, f"train.batch_size={t.batch_size} must be divisible by "
           f"train.accumulate={t.accumulate}: each step runs as {t.accumulate} equal micro-batches")
    _check(t.accumulate == 1 or getattr(method, "accumulates", True),
           f"train.accumulate={t.accumulate} is not possible with method {cfg.method.name}: its loss is not a mean "
           f"of per-sample terms (it compares the samples of a batch with each other), so micro-batches would "
           f"change it; use train.accumulate=1")
    _check(t.ema_decay is None or 0 < t.ema_decay < 1,
           f"train.ema_decay must be in (0, 1), e.g. 0.999, or null for no EMA (got {t.ema_decay})")
    _choice("train.amp", t.amp, ("auto", "bf16", "none"))
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    _check(bool(t.compile_backend), "train.compile_backend must name a torch.compile backend, e.g. inductor")
    _check(t.eval_every >= 0, f"train.eval_every must be >= 0 (got {t.eval_every})")
    _choice("train.mix", t.mix, ("none", "mixup", "cutmix", "remix"))
    _check(t.mix_alpha > 0 and t.mix_alpha < float("inf"),
           f"train.mix_alpha must be a finite number > 0 (got {t.mix_alpha}); 1 draws lambda uniformly")
    _check(0 <= t.mix_prob <= 1, f"train.mix_prob must be in [0, 1] (got {t.mix_prob})")
    _check(t.remix_kappa >= 1 and t.remix_kappa < float("inf"),
           f"train.remix_kappa must be a finite number >= 1 (got {t.remix_kappa}); Remix uses 3")
    _check(0 <= t.remix_tau <= 1, f"train.remix_tau must be in [0, 1] (got {t.remix_tau}); Remix uses 0.5")
    _check(t.mix_stop_epoch is None or t.mix_stop_epoch >= 1,
           f"train.mix_stop_epoch must be >= 1 or null (got {t.mix_stop_epoch}); for no mixing set train.mix=none")
    refusal = getattr(method, "mixing_refusal", None)
    why = refusal() if t.mix != "none" and refusal is not None else None
    _check(why is None, f"train.mix={t.mix} cannot be used: {why}; set train.mix=none")
    _check(t.mix == "none" or t.accumulate == 1,
           f"train.mix={t.mix} cannot be combined with train.accumulate={t.accumulate}: the mixed loss's two "
           f"label terms have different class-weight normalisers, so micro-batches would not add up to the "
           f"batch's update; use train.accumulate=1")
    _check(e.posthoc_tau >= 0, f"eval.posthoc_tau must be >= 0 (got {e.posthoc_tau})")
    _check(e.ece_bins >= 1, f"eval.ece_bins must be >= 1 (got {e.ece_bins})")
    _check(e.batch_size >= 1, f"eval.batch_size must be >= 1 (got {e.batch_size})")
    _check(0 <= e.few_below <= e.many_above + 1, f"eval.few_below must be in [0, eval.many_above + 1] (got "
           f"few_below={e.few_below}, many_above={e.many_above}): Many n > many_above, Few n < few_below")
    dev = cfg.device
    _check(
        dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
        f"device must be auto, cpu, cuda or cuda:N (got '{dev}')",
    )
    entry = DATASETS.get(d.name)
    if getattr(entry, "check", None) is not None:
        entry.check(d)
    return cfg
