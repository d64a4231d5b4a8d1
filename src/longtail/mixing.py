"""Batch mixing for the single-view methods: mixup, CutMix and Remix (``train.mix``).

Each image x_a of a training batch is paired with the image x_b at a random permutation of the batch
and the pair is mixed with λ ~ Beta(α, α) (one λ per batch, ``train.mix_alpha``); with probability
``1 − train.mix_prob`` a batch is left unmixed (λ = 1). The label rules, each as its paper states it:

* **mixup** (Zhang et al., ICLR 2018): x̃ = λ·x_a + (1 − λ)·x_b; loss λ·L(y_a) + (1 − λ)·L(y_b).
* **CutMix** (Yun et al., ICCV 2019): a box of area ratio 1 − λ, its centre uniform over the pixels,
  clipped to the image, is filled with x_b's pixels; λ is then recomputed as the share of pixels kept
  from x_a (the clipped box can be smaller), and the loss is λ·L(y_a) + (1 − λ)·L(y_b).
* **Remix** (Chou et al., ECCV-W 2020, "Remix: Rebalanced Mixup"): the images are mixed as in mixup with
  λ_x = λ; the label weight of y_a is, per sample, with the training counts n of the classes,
  κ = ``train.remix_kappa`` and τ = ``train.remix_tau``::

      λ_y = 0    if n_{y_a} / n_{y_b} ≥ κ   and λ_x < τ
      λ_y = 1    if n_{y_a} / n_{y_b} ≤ 1/κ and 1 − λ_x < τ
      λ_y = λ_x  otherwise

  so when a majority-class image is mixed with a minority-class one that dominates the pixels by less
  than τ, the mixed image takes the minority class's label entirely. (The ratios are compared as
  n_{y_a} ≥ κ·n_{y_b} and κ·n_{y_a} ≤ n_{y_b}, in float64, so the boundaries are exact.)

The mixed loss, defined once for every criterion ``L(logits, targets)``: L_λ(y_a) + L_{1−λ}(y_b), where
L_c(y) is the criterion with each sample's term multiplied by its coefficient c_i and the criterion's
own normaliser unchanged (B for a batch mean, Σ_i w_{y_i} for a class-weighted mean such as LDAM-DRW's
re-weighting). For a batch-wide λ (mixup, CutMix) this is exactly λ·L(y_a) + (1 − λ)·L(y_b), computed
that way for any criterion. Remix's per-sample λ_y needs the per-sample terms: the built-in losses take
them as ``criterion(logits, targets, sample_weight=c)``; a plugin's criterion supports Remix by
accepting the same keyword (torch's ``nn.CrossEntropyLoss`` is handled here).

Training accuracy under mixing is λ-weighted: a prediction scores λ_y if it is y_a and 1 − λ_y if it
is y_b (plain accuracy when λ = 1). Evaluation is never mixed.

Randomness: every step draws from its own generator on the training device, seeded with
``mix_seed(train.seed, epoch, step, 1)`` (the augmentation uses stream 0), so a run is a function of its
seed and a resumed run mixes exactly as an uninterrupted one. Nothing is read on the host. Under DDP
each rank pairs the images of its own share of the global batch (every rank draws the same λ).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError

__all__ = ["MIX_MODES", "MixedLabels", "BatchMixer", "draw_lambda", "mixup_images", "cutmix_box",
           "cutmix_images", "remix_label_weights", "mixed_criterion", "mixed_correct", "check_criterion"]

MIX_MODES = ("none", "mixup", "cutmix", "remix")
MIX_STREAM = 1  # the last integer of the step's seed: 0 is the augmentation's


class MixedLabels(NamedTuple):
    """The labels of a mixed batch: ``labels_b`` int64 [B] (the partners' labels y_b) and ``lam``, the
    weight of y_a's label: a float32 scalar (mixup, CutMix) or float32 [B] (Remix's λ_y)."""

    labels_b: Tensor
    lam: Tensor


def draw_lambda(g: torch.Generator, alpha: float, prob: float, device) -> Tensor:
    """λ ~ Beta(α, α) as a float32 scalar on ``device``, or 1 (no mixing) with probability 1 − ``prob``.

    Beta(α, α) = X / (X + Y) with X, Y ~ Gamma(α) drawn from ``g`` in float64 (small α underflows in
    float32). Draws, in order: the two gammas, then one uniform for the mixing decision.
    """
    gam = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64, device=device), generator=g)
    lam = gam[0] / (gam[0] + gam[1]).clamp_min(torch.finfo(torch.float64).tiny)
    u = torch.rand((), generator=g, dtype=torch.float64, device=device)
    return torch.where(u < prob, lam, torch.ones_like(lam)).to(torch.float32)


def mixup_images(x: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """λ·x + (1 − λ)·x[partner]. Shape: x [B, C, H, W], partner int64 [B], lam scalar -> [B, C, H, W]."""
    lam = lam.to(x.dtype)
    return lam * x + (1 - lam) * x[partner]


def cutmix_box(g: torch.Generator, lam: Tensor, height: int, width: int) -> Tensor:
    """CutMix's box for λ: bool [H, W], True inside a box of floor(H·√(1−λ)) × floor(W·√(1−λ)) pixels
    whose centre pixel is uniform over the image, clipped to the image (drawn from ``g``: two uniforms).

    The box's rows are cy − ⌊h/2⌋ … cy − ⌊h/2⌋ + h − 1 (likewise the columns), then clipped; it is built
    by comparing aranges with the bounds, on the device, so nothing is read on the host.
    """
    dev = lam.device
    side = torch.sqrt((1 - lam.to(torch.float64)).clamp(0, 1))
    u = torch.rand(2, generator=g, dtype=torch.float64, device=dev)

    def inside(size: int, frac: Tensor) -> Tensor:
        length = torch.floor(size * side)
        centre = torch.floor(frac * size).clamp(max=size - 1)
        low = centre - torch.floor(length / 2)
        pos = torch.arange(size, dtype=torch.float64, device=dev)
        return (pos >= low) & (pos < low + length)  # positions outside the image are simply absent

    return inside(height, u[0])[:, None] & inside(width, u[1])[None, :]


def cutmix_images(x: Tensor, partner: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """x with the box's pixels taken from x[partner], and λ = the share of pixels kept from x (float32).

    Shape: x [B, C, H, W], partner int64 [B], box bool [H, W] -> ([B, C, H, W], scalar).
    """
    mixed = torch.where(box, x[partner], x)
    return mixed, 1 - box.to(torch.float32).mean()


def remix_label_weights(n_a: Tensor, n_b: Tensor, lam: Tensor, kappa: float, tau: float) -> Tensor:
    """Remix's λ_y per sample (module docstring) for classes with training counts ``n_a``, ``n_b``.

    Shape: n_a, n_b [B] (any number dtype), lam float32 scalar -> float32 [B].
    """
    n_a, n_b = n_a.to(torch.float64), n_b.to(torch.float64)
    lam = lam.to(torch.float32)
    to_b = (n_a >= kappa * n_b) & (lam < tau)  # y_a the majority class, x_a less than tau of the image
    to_a = (kappa * n_a <= n_b) & (1 - lam < tau)  # y_a the minority class, x_b less than tau of it
    lam_y = lam.expand(n_a.shape)
    return torch.where(to_b, torch.zeros_like(lam_y), torch.where(to_a, torch.ones_like(lam_y), lam_y))


def _accepts_sample_weight(criterion: nn.Module) -> bool:
    try:
        return "sample_weight" in inspect.signature(criterion.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


def check_criterion(criterion: nn.Module, mode: str, method: str) -> None:
    """Raise ConfigError if ``mode`` needs per-sample label weights that ``criterion`` cannot take."""
    if mode != "remix" or isinstance(criterion, nn.CrossEntropyLoss) or _accepts_sample_weight(criterion):
        return
    raise ConfigError(f"train.mix=remix needs per-sample label weights, but the loss of method '{method}' "
                      f"({type(criterion).__name__}) has no sample_weight argument; use train.mix=mixup or "
                      f"cutmix, or give its forward a sample_weight (docs/api.md)")


def _torch_cross_entropy(criterion: nn.CrossEntropyLoss, logits: Tensor, targets: Tensor, c: Tensor) -> Tensor:
    """torch's ``nn.CrossEntropyLoss`` (reduction 'mean') with per-sample coefficients ``c``."""
    if criterion.reduction != "mean":
        raise ConfigError(f"train.mix=remix needs a criterion with reduction 'mean' (got '{criterion.reduction}')")
    terms = F.cross_entropy(logits, targets, weight=criterion.weight, ignore_index=criterion.ignore_index,
                            label_smoothing=criterion.label_smoothing, reduction="none")
    kept = (targets != criterion.ignore_index).to(terms.dtype)
    w = kept if criterion.weight is None else criterion.weight[targets.clamp_min(0)].to(terms.dtype) * kept
    return (c.to(terms.dtype) * terms).sum() / w.sum()


def _weighted(criterion: nn.Module, logits: Tensor, targets: Tensor, c: Tensor) -> Tensor:
    if isinstance(criterion, nn.CrossEntropyLoss) and not _accepts_sample_weight(criterion):
        return _torch_cross_entropy(criterion, logits, targets, c)
    return criterion(logits, targets, sample_weight=c)


def mixed_criterion(criterion: nn.Module, logits: Tensor, labels: Tensor, mix: MixedLabels) -> Tensor:
    """The mixed loss L_λ(y_a) + L_{1−λ}(y_b) of the module docstring.

    A scalar λ gives λ·L(y_a) + (1 − λ)·L(y_b) for any criterion; a per-sample λ [B] needs a criterion
    with ``sample_weight`` (:func:`check_criterion`).

    Shape: logits [B, K], labels int64 [B], mix.labels_b [B], mix.lam scalar or [B] -> scalar.
    """
    lam = mix.lam
    if lam.dim() == 0:
        return lam * criterion(logits, labels) + (1 - lam) * criterion(logits, mix.labels_b)
    return _weighted(criterion, logits, labels, lam) + _weighted(criterion, logits, mix.labels_b, 1 - lam)


def mixed_correct(logits: Tensor, labels: Tensor, mix: Optional[MixedLabels]) -> Tensor:
    """Correct predictions of a batch: λ-weighted under mixing (λ_y for y_a, 1 − λ_y for y_b), else the count."""
    pred = logits.argmax(dim=1)
    if mix is None:
        return (pred == labels).sum()
    lam = mix.lam.to(torch.float32)
    return (lam * (pred == labels) + (1 - lam) * (pred == mix.labels_b)).sum()


class BatchMixer:
    """Mixes the classification view of each training batch as ``train.mix`` says (module docstring).

    Args:
        train_cfg: the ``train`` section (``mix``, ``mix_alpha``, ``mix_prob``, ``remix_kappa``,
            ``remix_tau``, ``mix_stop_epoch``, ``seed``).
        counts: training images per class (Remix's n), a tensor on the training device.
    """

    def __init__(self, train_cfg, counts: Tensor) -> None:
        if train_cfg.mix not in MIX_MODES[1:]:
            raise ConfigError(f"train.mix must be one of {', '.join(MIX_MODES)} (got '{train_cfg.mix}')")
        self.mode, self.alpha, self.prob = train_cfg.mix, float(train_cfg.mix_alpha), float(train_cfg.mix_prob)
        self.kappa, self.tau = float(train_cfg.remix_kappa), float(train_cfg.remix_tau)
        self.stop_epoch, self.seed = train_cfg.mix_stop_epoch, int(train_cfg.seed)
        self.counts = counts
        self._gen: Optional[torch.Generator] = None

    def active(self, epoch: int) -> bool:
        """Whether the batches of 0-based ``epoch`` are mixed (``train.mix_stop_epoch``)."""
        return self.stop_epoch is None or epoch < self.stop_epoch

    def generator(self, epoch: int, step: int, device: torch.device) -> torch.Generator:
        """The step's generator on ``device``, seeded from (seed, epoch, step): any step is reproducible alone."""
        from longtail.data.samplers import mix_seed

        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
        self._gen.manual_seed(mix_seed(self.seed, epoch, step, MIX_STREAM))
        return self._gen

    def __call__(self, x: Tensor, labels: Tensor, epoch: int, step: int) -> tuple[Tensor, MixedLabels]:
        """The mixed view and its labels. Draws, in order: λ (:func:`draw_lambda`), the partner
        permutation, then CutMix's box.

        Shape: x float [B, C, H, W], labels int64 [B] -> ([B, C, H, W], MixedLabels).
        """
        g = self.generator(epoch, step, x.device)
        lam = draw_lambda(g, self.alpha, self.prob, x.device)
        partner = torch.randperm(labels.shape[0], generator=g, device=x.device)
        labels_b = labels[partner]
        if self.mode == "cutmix":
            mixed, lam = cutmix_images(x, partner, cutmix_box(g, lam, x.shape[-2], x.shape[-1]))
        else:
            mixed = mixup_images(x, partner, lam)
        if self.mode == "remix":
            counts = self.counts.to(labels.device)
            lam = remix_label_weights(counts[labels], counts[labels_b], lam, self.kappa, self.tau)
        if x.is_contiguous(memory_format=torch.channels_last):
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        return mixed, MixedLabels(labels_b, lam)


def mixing_refusal(method_cls) -> Optional[str]:
    """Why ``method_cls`` cannot train with batch mixing (None: it can)."""
    views = getattr(method_cls, "num_views", 1)
    if views > 1:
        return (f"method '{method_cls.name}' trains on {views} views per image, and mixing pairs the images of "
                f"one view only (its other views would no longer show the mixed image); batch mixing is for "
                f"single-view methods")
    from longtail.methods.base import Method

    if method_cls.loss is not Method.loss and method_cls.mixed_loss is Method.mixed_loss:
        return (f"method '{method_cls.name}' computes its own loss (it overrides Method.loss) without a "
                f"mixed_loss for mixed batches")
    return None

