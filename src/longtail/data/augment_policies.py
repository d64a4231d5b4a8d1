"""AutoAugment (CIFAR-10 policy) and timm-style RandAugment as batched tensor ops.

A policy draws, per sample, which op runs at each stage and with which magnitude; the ops themselves
are the PIL-exact kernels of :mod:`longtail.data.pil_ops`, applied by its fused :func:`apply_ops`, so
a stage costs a fixed number of kernel launches whatever the batch and the draws. The draws go through
:mod:`longtail.data.draws` (rank- and stacking-aware). Magnitude tables are built once per device and
image size.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from longtail import hostsync
from longtail.data.draws import batch_rows, rand, randint, randn, stacked
from longtail.data.fused_ops import apply_ops
from longtail.data.pil_ops import (GEOMETRIC_OPS, INTERPOLATIONS, Fill, affine, affine_nearest, autocontrast,
                                   brightness, check_batch, check_interpolation, color, contrast, draw_interpolation,
                                   equalize, fill_tensor, invert, posterize, rotate, sharpness, shear_x, shear_y,
                                   solarize, solarize_add, translate_x, translate_y)

__all__ = [
    "AA_CIFAR10_POLICY", "RA_OPS", "INTERPOLATIONS", "affine", "affine_nearest", "shear_x", "shear_y", "translate_x",
    "translate_y", "rotate", "invert", "posterize", "solarize", "solarize_add", "autocontrast",
    "equalize", "brightness", "color", "contrast", "sharpness", "apply_ops", "auto_augment_cifar",
    "rand_augment", "aa_draw", "ra_draw", "batch_rows", "stacked", "rand", "randint", "randn", "check_batch",
    "fill_tensor",
]

_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def _size_multiplier(name: str, h: int, w: int) -> float:
    """Translations are given as a fraction of the image side: W for TranslateX, H for TranslateY."""
    return float(w) if name == "TranslateX" else float(h) if name == "TranslateY" else 1.0


def _signed(offset: Tensor, mag: Tensor, signed: Tensor, negate: Tensor) -> Tensor:
    """offset + mag, or offset - mag where the op takes a random sign and the draw says negative."""
    return torch.where(negate & signed, offset - mag, offset + mag)

# ---------------------------------------------------------------------------- AutoAugment

# Cubuk et al. 2019, the CIFAR-10 policy: 25 sub-policies of two (op, probability, magnitude bin 0..9)
_AA_TABLE = """
Invert 0.1 7        Contrast 0.2 6      Rotate 0.7 2        TranslateX 0.3 9    Sharpness 0.8 1     Sharpness 0.9 3
ShearY 0.5 8        TranslateY 0.7 9    AutoContrast 0.5 8  Equalize 0.9 2      ShearY 0.2 7        Posterize 0.3 7
Color 0.4 3         Brightness 0.6 7    Sharpness 0.3 9     Brightness 0.7 9    Equalize 0.6 5      Equalize 0.5 1
Contrast 0.6 7      Sharpness 0.6 5     Color 0.7 7         TranslateX 0.5 8    Equalize 0.3 7      AutoContrast 0.4 8
TranslateY 0.4 3    Sharpness 0.2 6     Brightness 0.9 6    Color 0.2 8         Solarize 0.5 2      Invert 0.0 3
Equalize 0.2 0      AutoContrast 0.6 0  Equalize 0.2 8      Equalize 0.6 4      Color 0.9 9         Equalize 0.6 6
AutoContrast 0.8 4  Solarize 0.2 8      Brightness 0.1 3    Color 0.7 0         Solarize 0.4 5      AutoContrast 0.9 3
TranslateY 0.9 9    TranslateY 0.7 9    AutoContrast 0.9 2  Solarize 0.8 3      Equalize 0.8 8      Invert 0.1 3
TranslateY 0.7 9    AutoContrast 0.9 1
"""


def _parse_policy(table: str) -> tuple:
    words = table.split()
    stages = [(words[i], float(words[i + 1]), int(words[i + 2])) for i in range(0, len(words), 3)]
    return tuple((stages[i], stages[i + 1]) for i in range(0, len(stages), 2))


#: Cubuk et al. 2019, CIFAR-10 policy: 25 sub-policies of two (op, probability, magnitude bin 0..9).
AA_CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = _parse_policy(_AA_TABLE)
_AA_NAMES = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Equalize",
             "Invert", "Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")


def _aa_magnitude(name: str, m: int) -> float:
    """Magnitude of bin m (0..9), torchvision's ranges: linspace over 10 bins up to the maximum."""
    maxima = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331, "TranslateY": 150 / 331, "Rotate": 30.0}
    if name in maxima:
        return maxima[name] * m / 9  # translations as a fraction of the image size
    if name in _ENHANCE:
        return 0.9 * m / 9  # factor 1 +- this
    if name == "Posterize":
        return float(8 - round(4 * m / 9))  # bits kept
    if name == "Solarize":
        return 255.0 * (1 - m / 9)  # threshold in levels
    return 0.0


def _aa_tables(device: torch.device, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Per (sub-policy, stage): the op index [25, 2] and (probability, offset, magnitude, random sign)
    [25, 2, 4], the magnitude already in pixels for translations; built once per device and size."""
    return (hostsync.cached(("aa_ops",), device, lambda d: _aa_build(h, w)[0].to(d)),
            hostsync.cached(("aa_table", h, w), device, lambda d: _aa_build(h, w)[1].to(d)))


def _aa_build(h: int, w: int) -> tuple[Tensor, Tensor]:
    subs = [s for sub in AA_CIFAR10_POLICY for s in sub]
    op = torch.tensor([_AA_NAMES.index(n) for n, _, _ in subs]).view(25, 2)
    base = torch.tensor([_aa_magnitude(n, m) for n, _, m in subs])  # float32, as the per-step math always was
    mag = base * torch.tensor([_size_multiplier(n, h, w) for n, _, _ in subs])
    prob = torch.tensor([p for _, p, _ in subs])
    offset = torch.tensor([float(n in _ENHANCE) for n, _, _ in subs])
    signed = torch.tensor([float(n in GEOMETRIC_OPS or n in _ENHANCE) for n, _, _ in subs])
    return op, torch.stack([prob, offset, mag, signed], -1).view(25, 2, 4)


def aa_draw(g: torch.Generator, b: int, h: int, w: int, device) -> tuple[Tensor, Tensor]:
    """The per-sample draws of :func:`auto_augment_cifar`: op index into the 14 AutoAugment ops (-1 where
    the stage is skipped) and its parameter, each [B, 2] (one column per stage).

    Draws, all from ``g``: ``randint(25, [B])`` for the sub-policy, then ``rand([B, 2, 2])`` (per stage:
    apply, negate)."""
    op_t, table = _aa_tables(torch.device(device), h, w)
    sub = randint(0, len(AA_CIFAR10_POLICY), g, b, device=device)
    u = rand(g, b, 2, 2, device=device)
    row = table[sub]  # [B, 2, 4]
    prob, offset, mag, signed = row.unbind(-1)
    param = _signed(offset, mag, signed > 0, u[..., 1] < 0.5)
    minus = hostsync.constant(-1, torch.int64, op_t.device)
    return torch.where(u[..., 0] < prob, op_t[sub], minus), param


def auto_augment_cifar(x: Tensor, g: torch.Generator, fill: Fill = 128 / 255) -> Tensor:
    """AutoAugment with the CIFAR-10 policy, one uniformly chosen sub-policy per sample.

    Magnitudes follow torchvision's bins (shear 0.3, translate 150/331 of the size, rotate 30 deg,
    enhance factors 1 +- 0.9, posterize 8..4 bits, solarize threshold 255..0 levels, each at bin 9);
    shear, translate, rotate and enhance magnitudes get a random sign. ``fill`` defaults to the
    (128, 128, 128) grey of the common CIFAR implementation. Rotate, shear and translate use nearest
    resampling, as torchvision's AutoAugment does by default. Random draws: see :func:`aa_draw`.

    Shape:
        x: [B, C, H, W] in [0, 1]; returns the same shape.
    """
    check_batch(x, g)
    b, _, h, w = x.shape
    op, param = aa_draw(g, b, h, w, x.device)
    for s in range(2):
        x = apply_ops(x, _AA_NAMES, op[:, s], param[:, s], fill)
    return x


# ---------------------------------------------------------------------------- RandAugment

#: timm's RandAugment ops (Cutout excluded) -> (value at level 10, offset, random sign, integer,
#: size axis). Translations are 0.45 of the image size at level 10 (timm's translate_pct).
RA_OPS: dict[str, tuple[float, float, bool, bool, int]] = {
    "AutoContrast": (0.0, 0.0, False, False, 0), "Equalize": (0.0, 0.0, False, False, 0),
    "Invert": (0.0, 0.0, False, False, 0), "Rotate": (30.0, 0.0, True, False, 0),
    "Posterize": (4.0, 0.0, False, True, 0), "Solarize": (256.0, 0.0, False, True, 0),
    "SolarizeAdd": (110.0, 0.0, False, True, 0), "Color": (1.8, 0.1, False, False, 0),
    "Contrast": (1.8, 0.1, False, False, 0), "Brightness": (1.8, 0.1, False, False, 0),
    "Sharpness": (1.8, 0.1, False, False, 0), "ShearX": (0.3, 0.0, True, False, 0),
    "ShearY": (0.3, 0.0, True, False, 0), "TranslateX": (0.45, 0.0, True, False, 1),
    "TranslateY": (0.45, 0.0, True, False, 2),
}
_RA_NAMES = tuple(RA_OPS)


def _ra_table(device: torch.device, h: int, w: int, translate_px: float | None) -> Tensor:
    """Per op [15, 5]: value at level 10, offset, random sign, integer, size multiplier (W or H for relative
    translations; 1 otherwise, and for absolute ones, whose level-10 value is ``translate_px`` pixels)."""
    return hostsync.cached(("ra_table", h, w, translate_px), device, lambda d: _ra_build(h, w, translate_px).to(d))


def _ra_build(h: int, w: int, translate_px: float | None) -> Tensor:
    rows = []
    for name, (top, offset, signed, integer, axis) in RA_OPS.items():
        mult = 1.0 if translate_px is not None or axis == 0 else float(w) if axis == 1 else float(h)
        top = float(translate_px) if translate_px is not None and axis > 0 else top
        rows.append((top, offset, float(signed), float(integer), mult))
    return torch.tensor(rows, dtype=torch.float32)


def ra_draw(g: torch.Generator, b: int, h: int, w: int, device, n: int = 2, m: float = 10.0, mstd: float = 0.0,
            p: float = 0.5, translate_px: float | None = None) -> tuple[Tensor, Tensor]:
    """The per-sample draws of :func:`rand_augment`: op index into :data:`RA_OPS` (-1 where skipped) and
    its parameter, each [B, n].

    Draws, all from ``g``: ``randint(15, [B, n])``, ``rand([B, n, 2])`` (apply, negate), then
    ``randn([B, n])`` when ``0 < mstd < inf`` or ``rand([B, n])`` when ``mstd == inf``."""
    table = _ra_table(torch.device(device), h, w, translate_px)
    op = randint(0, len(_RA_NAMES), g, b, n, device=device)
    u = rand(g, b, n, 2, device=device)
    if math.isinf(mstd):
        level = rand(g, b, n, device=device) * m
    elif mstd > 0:
        level = m + mstd * randn(g, b, n, device=device)
    else:
        level = hostsync.constant(float(m), torch.float32, table.device).expand(b, n)
    level = level.clamp(0.0, 10.0)
    top, offset, signed, integer, mult = table[op].unbind(-1)  # each [B, n]
    base = level / 10.0 * top
    base = torch.where(integer > 0, base.floor(), base)
    param = _signed(offset, base * mult, signed > 0, u[..., 1] < 0.5)
    minus = hostsync.constant(-1, torch.int64, table.device)
    return torch.where(u[..., 0] < p, op, minus), param


def rand_augment(x: Tensor, g: torch.Generator, n: int = 2, m: float = 10.0, mstd: float = 0.0,
                 fill: Fill = 128 / 255, p: float = 0.5, translate_px: float | None = None,
                 interpolation: str = "nearest") -> Tensor:
    """timm-style RandAugment: ``n`` ops drawn uniformly with replacement from the 15 of
    :data:`RA_OPS`, each applied with probability ``p``, per sample.

    The level is ``m`` (``mstd == 0``), ``N(m, mstd^2)`` (``mstd > 0``) or ``U(0, m)``
    (``mstd == inf``), clipped to [0, 10] like timm (so m > 10 acts as 10). timm's level mappings
    are kept, including their quirks: posterize keeps ``int(4 L / 10)`` bits and solarize inverts
    levels >= ``int(256 L / 10)``, so at L = 10 solarize does nothing. Translations reach 0.45 of
    the image side at level 10 (timm's relative TranslateRel); a given ``translate_px`` makes them
    absolute instead, ``translate_px`` pixels at level 10 (timm's TranslateX with
    ``translate_const``).

    ``interpolation`` resamples Rotate, ShearX/Y and TranslateX/Y like Pillow's ``Image.transform``
    (:data:`~longtail.data.pil_ops.INTERPOLATIONS`). ``"nearest"`` (the default) is what the CIFAR
    RandAugment preset uses; ``"random"`` draws bilinear or bicubic with equal probability per sample and
    op application, as timm does for every op call (BCL's ImageNet-LT / iNat recipe, which also
    translates by up to 0.45 of the side: ``translate_px=None``).

    Random draws, all from ``g``: those of :func:`ra_draw`, then with ``interpolation="random"``
    ``rand([B, n]) < 0.5`` (True: bicubic). The other modes draw nothing more, so their draws are
    unchanged.

    Shape:
        x: [B, C, H, W] in [0, 1]; returns the same shape.
    """
    check_batch(x, g)
    if n < 0 or not mstd >= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"rand_augment needs n >= 0, mstd >= 0 and p in [0, 1], got n={n}, mstd={mstd}, p={p}")
    if translate_px is not None and not 0.0 <= translate_px < math.inf:
        raise ValueError(f"translate_px must be a finite number of pixels >= 0 (or None), got {translate_px}")
    check_interpolation(interpolation)
    b, _, h, w = x.shape
    op, param = ra_draw(g, b, h, w, x.device, n=n, m=m, mstd=mstd, p=p, translate_px=translate_px)
    interp = draw_interpolation(interpolation, g, b, n, device=x.device)
    for i in range(n):
        x = apply_ops(x, _RA_NAMES, op[:, i], param[:, i], fill,
                      interpolation=interp[:, i] if isinstance(interp, Tensor) else interp)
    return x
