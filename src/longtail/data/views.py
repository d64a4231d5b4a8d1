"""Training views: the augmentation presets (``data.augment``) as batched views and per-image transforms.

A preset is a registry entry (:data:`longtail.registry.PRESETS`) with two builders: ``view(**settings)``,
the batched :class:`ViewPipeline` for datasets held on the device, and ``transform(train=..., **settings)``,
the per-image PIL/torchvision pipeline for DataLoader datasets. The built-in presets compose the ops of
:mod:`longtail.data.augment` into the views of docs/methods.md §2.4 (docs/methods.md); a plugin registers its
own preset with ``PRESETS.register(name, entry)``, an object with the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

from longtail.data.augment import (Step, auto_augment_cifar, color_jitter, cutout, gaussian_blur, normalize,
                                   rand_augment, random_crop, random_grayscale, random_hflip, random_resized_crop,
                                   to_float)
from longtail.registry import PRESETS as _REGISTRY

__all__ = ["PRESETS", "ViewPipeline", "build_view", "build_torchvision_transform"]

#: the built-in presets
PRESETS = ("none", "standard", "autoaugment", "randaugment", "simclr", "simclr_rand", "proco_cifar")
_cutout = cutout  # build_view's `cutout` argument shadows the function

#: RandAugment's geometric settings, the one place they are chosen. Small images (the CIFAR / TinyImageNet
#: presets, batched or per image): nearest resampling, translations up to 0.45 of the side. Large images
#: (ImageNet-LT, iNat: BCL's timm RandAugment): the same relative translations, and bilinear or bicubic
#: drawn at random for every rotate / shear / translate application.
RANDAUGMENT_GEOMETRY = {"small": dict(translate_px=None, interpolation="nearest"),
                        "large": dict(translate_px=None, interpolation="random")}


@dataclass(frozen=True)
class ViewPipeline:
    """uint8 batch -> normalised float view: ``to_float`` then each named step ``(x, g) -> x``.

    Shape:
        uint8 [B, H, W, C] or [B, C, H, W] -> float32 [B, C, h, w].
    """

    steps: tuple[tuple[str, Step], ...]

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        y = to_float(x)
        for _, step in self.steps:
            y = step(y, g)
        return y

    def __repr__(self) -> str:
        return f"ViewPipeline({' -> '.join(['to_float'] + [n for n, _ in self.steps])})"


def _unknown_preset(preset: str) -> ValueError:
    return ValueError(f"unknown augmentation preset '{preset}'; valid presets: {', '.join(_REGISTRY.names())}")


def _check_ra(n: int, m: float, mstd: float) -> None:
    if n < 0 or not 0 <= m <= 10 or not mstd >= 0:
        raise ValueError(f"RandAugment needs randaugment_n >= 0, randaugment_m in [0, 10] and randaugment_mstd >= 0, "
                         f"got {n}, {m}, {mstd}")


def _ra_name(n: int, m: float, mstd: float) -> str:
    return f"randaugment_n{n}_m{m}" + (f"_mstd{mstd}" if mstd else "")


def _builtin_view(preset: str, *, image_size: int, crop_padding: int, flip: bool, cutout: int,
               randaugment_n: int = 2, randaugment_m: int = 10, randaugment_mstd: float = 0.0,
               mean: Sequence[float], std: Sequence[float]) -> ViewPipeline:
    """The batched training view for ``preset`` (one of :data:`PRESETS`).

    * ``none``: to_float, normalize.
    * ``standard``: random crop (``crop_padding``), flip, normalize, cutout if ``cutout > 0``.
    * ``autoaugment``: crop, flip, AutoAugment CIFAR-10 (grey fill), normalize, cutout
      (``cutout`` px, 16 when 0).
    * ``randaugment``: crop, flip, RandAugment(n, m, mstd; fill = ``mean``; nearest resampling),
      normalize, cutout if > 0.
    * ``simclr`` (BCL's CIFAR "sim" view, docs/methods.md §2.4): random resized crop (scale 0.2-1), flip,
      colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (sigma 0.1-2,
      p 0.5), normalize.
    * ``simclr_rand`` (the "rand" view = sim + RandAugment): the ``simclr`` steps up to the blur,
      then RandAugment(n, m, mstd; fill = ``mean``), normalize. RandAugment comes last so that the
      sim view is an unchanged prefix (same draws from ``g``), as in BCL's ImageNet "rand" stack,
      where RandAugment follows jitter and grayscale; putting it after the blur also keeps its
      8-bit ops (posterize, solarize, equalize) from being smoothed away.
    * ``proco_cifar`` (ProCo's CIFAR contrastive view): random resized crop (scale 0.08-1), flip,
      colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), normalize; no blur.

    Cutout runs after normalisation with value 0, i.e. the mean. ``flip`` switches the flip off.
    ``randaugment_mstd`` is the per-op level noise (0: the level is always ``randaugment_m``; BCL
    uses 0.5); it defaults to 0 so that older callers keep their views.
    """
    if preset not in PRESETS:
        raise _unknown_preset(preset)
    if image_size <= 0 or crop_padding < 0 or cutout < 0:
        raise ValueError(f"need image_size > 0, crop_padding >= 0 and cutout >= 0, "
                         f"got {image_size}, {crop_padding}, {cutout}")
    _check_ra(randaugment_n, randaugment_m, randaugment_mstd)
    sim = preset in ("simclr", "simclr_rand", "proco_cifar")
    scale = (0.08, 1.0) if preset == "proco_cifar" else (0.2, 1.0)
    steps: list[tuple[str, Step]] = []
    if preset in ("standard", "autoaugment", "randaugment"):
        steps.append((f"crop{image_size}+pad{crop_padding}",
                      partial(random_crop, size=image_size, padding=crop_padding)))
    if sim:
        steps.append((f"resized_crop{image_size}" + ("_scale0.08" if preset == "proco_cifar" else ""),
                      partial(random_resized_crop, size=image_size, scale=scale)))
    if flip and preset != "none":
        steps.append(("hflip", random_hflip))
    if preset == "autoaugment":
        steps.append(("autoaugment_cifar10", auto_augment_cifar))
    if sim:
        steps += [("color_jitter", partial(color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)),
                  ("grayscale", partial(random_grayscale, p=0.2))]
        if preset != "proco_cifar":
            steps.append(("gaussian_blur", partial(gaussian_blur, p=0.5)))
    if preset in ("randaugment", "simclr_rand"):
        steps.append((_ra_name(randaugment_n, randaugment_m, randaugment_mstd),
                      partial(rand_augment, n=randaugment_n, m=randaugment_m, mstd=randaugment_mstd,
                              fill=tuple(mean), **RANDAUGMENT_GEOMETRY["small"])))
    steps.append(("normalize", lambda x, g: normalize(x, mean, std)))
    size = cutout or (16 if preset == "autoaugment" else 0)
    if size and not sim:
        steps.append((f"cutout{size}", partial(_cutout, size=size)))
    return ViewPipeline(tuple(steps))


class _TensorStep:
    """Runs a batched op on one image tensor inside a torchvision pipeline.

    Randomness comes from torch's global CPU generator, which DataLoader seeds per worker.
    """

    def __init__(self, name: str, fn: Step) -> None:
        self.name, self.fn = name, fn

    def __call__(self, img: Tensor) -> Tensor:
        return self.fn(img[None], torch.default_generator)[0]

    def __repr__(self) -> str:
        return f"{self.name}()"


def _builtin_transform(preset: str, *, train: bool, image_size: int, crop_padding: int, flip: bool,
                                cutout: int, mean: Sequence[float], std: Sequence[float],
                                resize: int | None = None, center_crop: int | None = None,
                                randaugment_n: int = 2, randaugment_m: int = 10,
                                randaugment_mstd: float = 0.0) -> Callable:
    """The per-image PIL pipeline for DataLoader datasets.

    Evaluation (``train=False``) and ``none``: optional Resize(resize), CenterCrop(center_crop),
    ToTensor, Normalize. AutoAugment is torchvision's CIFAR-10 policy (fill 128). RandAugment and
    Cutout reuse this module's batched ops on a one-image batch after ToTensor (torchvision has
    neither timm's RandAugment nor fixed-size Cutout); RandAugment fills with ``mean``.

    Without ``resize`` (small images) the training presets equal :func:`build_view`'s. A given
    ``resize`` marks a "large" dataset (ImageNet-LT, iNat), whose presets follow the ImageNet rows
    of docs/methods.md §2.4 (BCL's official transforms):

    * ``standard``, ``autoaugment``: RandomResizedCrop(image_size) replaces RandomCrop + padding.
    * ``randaugment`` (BCL's v0): RandomResizedCrop(image_size, scale 0.08-1), flip,
      ColorJitter(0.4, 0.4, 0.4, 0) always, RandAugment(n, m, mstd) with translations of up to 0.45
      of the side at level 10 and bilinear or bicubic resampling drawn per op application
      (:data:`RANDAUGMENT_GEOMETRY`; small images keep nearest).
    * ``simclr`` ("sim"): RandomResizedCrop(image_size, scale 0.08-1), flip, ColorJitter(0.4, 0.4,
      0.4, 0.1) with p 0.8, RandomGrayscale(p 0.2); no blur.
    * ``simclr_rand`` ("rand"): the sim view, then RandAugment as in ``randaugment``.
    * ``proco_cifar``: RandomResizedCrop(image_size, scale 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4,
      0.1) with p 0.8, RandomGrayscale(p 0.2), no blur, at any size; for large images the same as
      ``simclr`` (ProCo's ImageNet contrastive view is BCL's sim view).

    BCL draws the RandAugment level from N(10, 0.5^2): pass ``randaugment_mstd=0.5``. The default
    0 keeps older callers' pipelines unchanged.

    Returns:
        A callable PIL image -> float tensor [C, h, w].
    """
    from torchvision import transforms as T

    if preset not in PRESETS:
        raise _unknown_preset(preset)
    _check_ra(randaugment_n, randaugment_m, randaugment_mstd)
    tail = [T.ToTensor()]
    post = [T.Normalize(list(mean), list(std))]
    if not train or preset == "none":
        head = ([T.Resize(resize)] if resize else []) + ([T.CenterCrop(center_crop)] if center_crop else [])
        return T.Compose(head + tail + post)
    large, sim = resize is not None, preset in ("simclr", "simclr_rand", "proco_cifar")
    if sim and not large:
        head = [T.RandomResizedCrop(image_size, scale=(0.08, 1.0) if preset == "proco_cifar" else (0.2, 1.0))]
    elif large:
        head = [T.RandomResizedCrop(image_size, scale=(0.08, 1.0))]
    else:
        head = [T.RandomCrop(image_size, padding=crop_padding)]
    if flip:
        head.append(T.RandomHorizontalFlip())
    if preset == "autoaugment":
        head.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=128))
    elif preset == "randaugment" and large:
        head.append(T.ColorJitter(0.4, 0.4, 0.4, 0.0))
    if sim:
        head += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
        if not large and preset != "proco_cifar":  # the ImageNet sim view has no blur (docs/methods.md §2.4)
            k = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            head.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    if preset in ("randaugment", "simclr_rand"):
        geometry = RANDAUGMENT_GEOMETRY["large" if large else "small"]
        tail.append(_TensorStep(
            f"RandAugment(n={randaugment_n}, m={randaugment_m}, mstd={randaugment_mstd}, "
            f"interpolation={geometry['interpolation']})",
            partial(rand_augment, n=randaugment_n, m=randaugment_m, mstd=randaugment_mstd, fill=tuple(mean),
                    **geometry)))
    size = cutout or (16 if preset == "autoaugment" else 0)
    if size and not sim:
        post.append(_TensorStep(f"Cutout({size})", partial(_cutout, size=size)))
    return T.Compose(head + tail + post)


@dataclass(frozen=True)
class BuiltinPreset:
    """A registry entry for one of the built-in presets."""

    name: str

    def view(self, **settings) -> ViewPipeline:
        return _builtin_view(self.name, **settings)

    def transform(self, **settings) -> Callable:
        return _builtin_transform(self.name, **settings)


for _name in PRESETS:
    _REGISTRY.register(_name, BuiltinPreset(_name))


def build_view(preset: str, **settings) -> ViewPipeline:
    """The batched training view of a registered preset (``data.augment``).

    Settings (keyword-only): ``image_size``, ``crop_padding``, ``flip``, ``cutout``, ``randaugment_n``,
    ``randaugment_m``, ``randaugment_mstd``, ``mean``, ``std``. The built-in presets:

    * ``none``: to_float, normalize.
    * ``standard``: random crop (``crop_padding``), flip, normalize, cutout if ``cutout > 0``.
    * ``autoaugment``: crop, flip, AutoAugment CIFAR-10 (grey fill), normalize, cutout (``cutout`` px, 16
      when 0).
    * ``randaugment``: crop, flip, RandAugment(n, m, mstd; fill = ``mean``), normalize, cutout if > 0.
    * ``simclr`` (BCL's CIFAR "sim" view): random resized crop (scale 0.2-1), flip, colour jitter
      (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (sigma 0.1-2, p 0.5), normalize.
    * ``simclr_rand`` (the "rand" view = sim + RandAugment): the ``simclr`` steps, then RandAugment.
    * ``proco_cifar`` (ProCo's CIFAR contrastive view): random resized crop (scale 0.08-1), flip, colour
      jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), normalize; no blur.

    Raises:
        ValueError: an unknown preset (naming the registered ones) or bad settings.
    """
    if preset not in _REGISTRY:
        raise _unknown_preset(preset)
    return _REGISTRY.get(preset).view(**settings)


def build_torchvision_transform(preset: str, **settings) -> Callable:
    """The per-image PIL pipeline of a registered preset for DataLoader datasets; ``train=False`` gives
    the evaluation transform. See :func:`_builtin_transform` for the built-ins' settings."""
    if preset not in _REGISTRY:
        raise _unknown_preset(preset)
    return _REGISTRY.get(preset).transform(**settings)
