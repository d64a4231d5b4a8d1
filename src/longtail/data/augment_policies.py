"""AutoAugment (CIFAR-10 policy) and timm-style RandAugment as batched tensor ops.

Every op kernel works on a whole float batch ``x`` [B, C, H, W] in [0, 1] (C = 1 or 3) with one
magnitude per sample, so a policy picks a different op for every image with masks, never a Python
loop over images. The kernels follow PIL (``ImageOps``, ``ImageEnhance``, ``Image.transform``), the
library the policies were searched with:

* Pointwise ops emulate 8-bit arithmetic: they work on the levels ``round(x * 255)`` and return
  ``levels / 255``. Thresholds and additive amounts are in levels (0..255). Blends (Brightness,
  Color, Contrast, Sharpness) truncate like PIL's ``Image.blend``, and Color/Contrast use PIL's
  fixed-point luma, so they match PIL exactly up to float rounding at exact integers.
* Geometric ops use PIL's convention: a 2x3 matrix maps the centre of each output pixel
  ``(i + 0.5, j + 0.5)`` to an input position whose floor is the source pixel (nearest
  neighbour); pixels that map outside the image take ``fill``. Sampling is a ``gather`` with
  exactly this floor rule rather than ``grid_sample``, whose nearest mode rounds half to even and
  so disagrees with PIL on pixels that land exactly on a boundary. Shear is about the top-left
  corner (as in the AutoAugment code), rotation about the image centre (as in ``Image.rotate``).
  Fractional translations are allowed (PIL's nearest rule applies; torchvision instead truncates
  them to whole pixels).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from functools import lru_cache
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from longtail import hostsync

__all__ = [
    "AA_CIFAR10_POLICY", "RA_OPS", "affine_nearest", "shear_x", "shear_y", "translate_x",
    "translate_y", "rotate", "invert", "posterize", "solarize", "solarize_add", "autocontrast",
    "equalize", "brightness", "color", "contrast", "sharpness", "apply_ops", "auto_augment_cifar",
    "rand_augment",
]

Fill = Union[float, Sequence[float]]
Param = Union[float, Tensor]

# ----------------------------------------------------------------------------------- random draws

_ROWS: contextvars.ContextVar[Optional[tuple[int, int]]] = contextvars.ContextVar("longtail_aug_rows",
                                                                                   default=None)


@contextlib.contextmanager
def batch_rows(offset: int, total: int):
    """Inside this block every random draw is made for ``total`` rows and rows ``offset`` … ``offset + B − 1``
    are used, where B is the batch the op sees.

    This is how a DDP rank augments its contiguous share of a global batch of ``total`` images (starting
    at ``offset``) with exactly the numbers that a single process, drawing for the whole batch from the
    same generator state, gives those images: augmentation does not depend on the world size.
    """
    if not (isinstance(offset, int) and isinstance(total, int) and 0 <= offset < total):
        raise ValueError(f"batch_rows needs 0 <= offset < total (got offset={offset!r}, total={total!r})")
    token = _ROWS.set((offset, total))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _rows(b: int) -> tuple[int, int]:
    """(offset, total) of the draw for a batch of b rows: (0, b) outside :func:`batch_rows`."""
    rows = _ROWS.get()
    if rows is None:
        return 0, b
    offset, total = rows
    if offset + b > total:
        raise ValueError(f"a batch of {b} rows does not fit at offset {offset} of a {total}-row global batch")
    return offset, total


def rand(g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.rand(b, *rest)`` from ``g``; inside :func:`batch_rows` this batch's rows of a global draw."""
    off, total = _rows(b)
    return torch.rand((total, *rest), generator=g, device=device)[off:off + b]


def randn(g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.randn(b, *rest)`` from ``g``, with the rows of :func:`rand`."""
    off, total = _rows(b)
    return torch.randn((total, *rest), generator=g, device=device)[off:off + b]


def randint(low: int, high: int, g: torch.Generator, b: int, *rest: int, device) -> Tensor:
    """``torch.randint(low, high, (b, *rest))`` from ``g``, with the rows of :func:`rand`."""
    off, total = _rows(b)
    return torch.randint(low, high, (total, *rest), generator=g, device=device)[off:off + b]


# ----------------------------------------------------------------------------------- helpers


def check_batch(x: Tensor, g: torch.Generator | None = None) -> None:
    """Raise ValueError unless ``x`` is a float [B, C, H, W] batch with C in (1, 3) and ``g`` is on
    the same device type."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or x.shape[1] not in (1, 3):
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a float tensor [B, C, H, W] with C = 1 or 3 (use to_float first), got {got}")
    if g is not None and g.device.type != x.device.type:
        raise ValueError(
            f"the generator is on '{g.device}' but the batch is on '{x.device}'; "
            f"create it with torch.Generator(device=x.device)"
        )


def _vec(p: Param, x: Tensor) -> Tensor:
    """A per-sample parameter as a float32 tensor [B] on x's device."""
    t = torch.as_tensor(p, dtype=torch.float32, device=x.device)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"a per-sample parameter must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t


def _col(p: Param, x: Tensor) -> Tensor:
    return _vec(p, x).view(-1, 1, 1, 1)


def fill_tensor(fill: Fill, x: Tensor) -> Tensor:
    """``fill`` (one value or one per channel, in [0, 1] units) as a [1, C, 1, 1] tensor."""
    f = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
    if f.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill must have 1 or {x.shape[1]} values for a {x.shape[1]}-channel batch, got {f.numel()}")
    return f.view(1, -1, 1, 1)


def _levels(x: Tensor) -> Tensor:
    """8-bit levels of a [0, 1] batch, as floats (exact integers)."""
    return (x * 255.0).round().clamp(0.0, 255.0)


def _pil_luma(v: Tensor) -> Tensor:
    """PIL's RGB -> L on levels, (19595 R + 38470 G + 7471 B + 2**15) >> 16; [B, 1, H, W].

    Every partial sum stays below 2**24, so float32 computes it exactly.
    """
    if v.shape[1] == 1:
        return v
    r, g, b = v.unbind(1)
    return ((19595.0 * r + 38470.0 * g + 7471.0 * b + 32768.0) / 65536.0).floor().unsqueeze(1)


def _blend(degenerate: Tensor, v: Tensor, factor: Param) -> Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` on levels: truncating, clipped to 0..255."""
    f = _col(factor, v)
    return (degenerate + f * (v - degenerate)).clamp(0.0, 255.0).floor() / 255.0


# ------------------------------------------------------------------------------- geometric ops


def affine_nearest(x: Tensor, matrix: Tensor, fill: Fill = 0.0) -> Tensor:
    """Nearest-neighbour affine warp with PIL's ``Image.transform(AFFINE)`` semantics.

    Args:
        x: batch in [0, 1].
        matrix: per-sample (a, b, c; d, e, f): output pixel centre (u, v) reads input pixel
            ``(floor(a u + b v + c), floor(d u + e v + f))``, in pixel units.
        fill: value(s) for pixels that map outside the image.

    Shape:
        x: [B, C, H, W]; matrix: [B, 2, 3]; returns [B, C, H, W].
    """
    b, c, h, w = x.shape
    m = matrix.to(device=x.device, dtype=torch.float32)
    us = torch.arange(w, device=x.device, dtype=torch.float32) + 0.5
    vs = torch.arange(h, device=x.device, dtype=torch.float32)[:, None] + 0.5
    cx = (m[:, 0, 0, None, None] * us + m[:, 0, 1, None, None] * vs + m[:, 0, 2, None, None]).floor().long()
    cy = (m[:, 1, 0, None, None] * us + m[:, 1, 1, None, None] * vs + m[:, 1, 2, None, None]).floor().long()
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return torch.where(inside[:, None], out, fill_tensor(fill, x))


def _identity_with(p: Tensor, slot: int) -> Tensor:
    """Per-sample identity matrices (1, 0, 0, 0, 1, 0) with row-major entry ``slot`` set to p."""
    m = torch.zeros(p.shape[0], 6, device=p.device, dtype=p.dtype)
    m[:, 0] = m[:, 4] = 1.0
    m[:, slot] = p
    return m.view(-1, 2, 3)


def _rotate_m(degrees: Tensor, h: int, w: int) -> Tensor:
    # Image.rotate: counter-clockwise by `degrees` about (w/2, h/2); the matrix is the inverse map.
    phi = -degrees * (math.pi / 180.0)
    cos, sin = phi.cos(), phi.sin()
    cx, cy = w / 2.0, h / 2.0
    first = torch.stack([cos, sin, cx - cos * cx - sin * cy], -1)
    return torch.stack([first, torch.stack([-sin, cos, cy + sin * cx - cos * cy], -1)], -2)


# op name -> (per-sample parameter [B], H, W) -> matrices [B, 2, 3]
_GEOMETRIC: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "ShearX": lambda p, h, w: _identity_with(p, 1), "ShearY": lambda p, h, w: _identity_with(p, 3),
    "TranslateX": lambda p, h, w: _identity_with(p, 2), "TranslateY": lambda p, h, w: _identity_with(p, 5),
    "Rotate": _rotate_m,
}


def _warp(x: Tensor, name: str, p: Param, fill: Fill) -> Tensor:
    return affine_nearest(x, _GEOMETRIC[name](_vec(p, x), *x.shape[2:]), fill)


def shear_x(x: Tensor, factor: Param, fill: Fill = 0.0) -> Tensor:
    """Horizontal shear, PIL data (1, factor, 0, 0, 1, 0). Shape: [B, C, H, W] -> same."""
    return _warp(x, "ShearX", factor, fill)


def shear_y(x: Tensor, factor: Param, fill: Fill = 0.0) -> Tensor:
    """Vertical shear, PIL data (1, 0, 0, factor, 1, 0). Shape: [B, C, H, W] -> same."""
    return _warp(x, "ShearY", factor, fill)


def translate_x(x: Tensor, pixels: Param, fill: Fill = 0.0) -> Tensor:
    """Horizontal shift, PIL data (1, 0, pixels, 0, 1, 0). Shape: [B, C, H, W] -> same."""
    return _warp(x, "TranslateX", pixels, fill)


def translate_y(x: Tensor, pixels: Param, fill: Fill = 0.0) -> Tensor:
    """Vertical shift, PIL data (1, 0, 0, 0, 1, pixels). Shape: [B, C, H, W] -> same."""
    return _warp(x, "TranslateY", pixels, fill)


def rotate(x: Tensor, degrees: Param, fill: Fill = 0.0) -> Tensor:
    """Counter-clockwise rotation about the centre, like ``Image.rotate``. Shape: [B, C, H, W] -> same."""
    return _warp(x, "Rotate", degrees, fill)


# ------------------------------------------------------------------------------- pointwise ops


def invert(x: Tensor) -> Tensor:
    """``ImageOps.invert``. Shape: [B, C, H, W] -> same."""
    return 1.0 - x


def posterize(x: Tensor, bits: Param) -> Tensor:
    """``ImageOps.posterize``: keep the ``bits`` (0..8) most significant bits. Shape: same as x."""
    step = torch.exp2(8.0 - _col(bits, x).floor().clamp(0.0, 8.0))
    return (_levels(x) / step).floor() * step / 255.0


def solarize(x: Tensor, threshold: Param) -> Tensor:
    """``ImageOps.solarize``: invert levels >= ``threshold`` (in levels, 0..256). Shape: same as x."""
    v = _levels(x)
    return torch.where(v >= _col(threshold, x), 255.0 - v, v) / 255.0


def solarize_add(x: Tensor, add: Param, threshold: float = 128.0) -> Tensor:
    """timm's SolarizeAdd: levels below ``threshold`` get ``+add`` (clipped to 255). Shape: same as x."""
    v = _levels(x)
    return torch.where(v < threshold, (v + _col(add, x)).clamp(max=255.0), v) / 255.0


def autocontrast(x: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): per-channel stretch of [min, max] to [0, 255].

    Computes ``floor((v - lo) * 255 / (hi - lo))`` exactly (a float quotient, then a one-step
    integer correction); PIL's double-precision lookup table can land one level lower where the
    quotient is an exact integer. Shape: same as x.
    """
    v = _levels(x)
    lo, hi = v.amin((2, 3), keepdim=True), v.amax((2, 3), keepdim=True)
    num, den = (v - lo) * 255.0, (hi - lo).clamp_min(1.0)
    q = (num / den).floor()  # all products below 2**16: exact in float32, so the fix-ups are too
    q = q - (q * den > num).to(q.dtype) + ((q + 1.0) * den <= num).to(q.dtype)
    return torch.where(hi > lo, q, v) / 255.0


def equalize(x: Tensor) -> Tensor:
    """``ImageOps.equalize``, per sample and channel, from one batched histogram.

    The histograms of all B*C channels are one ``scatter_add_`` over offset indices (no host sync,
    unlike ``bincount``). The lookup table is PIL's: ``step = (N - count of the top level) // 255``,
    ``lut[i] = (step // 2 + #pixels below i) // step``, identity when ``step == 0``. Shape: same as x.
    """
    b, c, h, w = x.shape
    v = _levels(x).long().view(b * c, h * w)
    offset = torch.arange(b * c, device=x.device)[:, None] * 256
    hist = torch.zeros(b * c * 256, dtype=torch.int64, device=x.device)
    hist = hist.scatter_add_(0, (v + offset).view(-1), torch.ones_like(v).view(-1)).view(b * c, 256)
    top_count = hist.gather(1, v.amax(1, keepdim=True))
    step = (h * w - top_count) // 255
    below = hist.cumsum(1) - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp(max=255)
    out = torch.where(step > 0, lut.gather(1, v), v)
    return out.view(b, c, h, w).to(x.dtype) / 255.0


def brightness(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black. Shape: same as x."""
    return _blend(torch.zeros_like(x), _levels(x), factor)


def color(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Color``: blend with the PIL luma image (identity for C = 1). Shape: same as x."""
    v = _levels(x)
    return _blend(_pil_luma(v), v, factor)


def contrast(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the rounded mean of the PIL luma. Shape: same as x."""
    v = _levels(x)
    mean = (_pil_luma(v).mean((1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(mean, v, factor)


def sharpness(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter (3x3, centre 5, /13, rounded),
    which leaves the 1-pixel border unfiltered. Shape: same as x."""
    v = _levels(x)
    if v.shape[2] < 3 or v.shape[3] < 3:
        return v / 255.0
    # kernel = 3x3 box + 4 x centre; two shifted sums are much cheaper than a 1-channel conv on CPU
    rows = v[..., :-2, :] + v[..., 1:-1, :] + v[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = v.clone()
    smooth[..., 1:-1, 1:-1] = ((box + 4.0 * v[..., 1:-1, 1:-1]) / 13.0).round()
    return _blend(smooth, v, factor)


# ------------------------------------------------------------------- per-sample op selection

_POINTWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": lambda x, p: autocontrast(x), "Equalize": lambda x, p: equalize(x),
    "Invert": lambda x, p: invert(x), "Posterize": posterize, "Solarize": solarize,
    "SolarizeAdd": solarize_add, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Sharpness": sharpness,
}


def apply_ops(x: Tensor, names: Sequence[str], op: Tensor, param: Tensor, fill: Fill = 0.0,
              subset: bool | None = None) -> Tensor:
    """Apply op ``names[op[i]]`` with argument ``param[i]`` to sample i (``op[i] == -1``: unchanged).

    All geometric ops of the batch are one warp (identity matrix for the other samples). With
    ``subset=False`` each pointwise op runs on the whole batch and is kept where selected: a few
    cheap elementwise passes with no host sync, the right trade on a GPU. With ``subset=True``
    each op runs only on its selected samples (boolean indexing, which syncs on CUDA), several
    times faster on a CPU. ``None`` picks ``subset`` on CPU tensors. Both give the same result.

    Shape:
        x: [B, C, H, W]; op: int64 [B]; param: float [B]; returns [B, C, H, W].
    """
    unknown = [n for n in names if n not in _GEOMETRIC and n not in _POINTWISE]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; valid: {sorted({**_GEOMETRIC, **_POINTWISE})}")
    subset = hostsync.reads_are_free(x) if subset is None else subset
    b, _, h, w = x.shape
    geometric = [(k, n) for k, n in enumerate(names) if n in _GEOMETRIC]
    if geometric:
        matrix = torch.eye(2, 3, device=x.device).expand(b, 2, 3)
        for k, n in geometric:
            matrix = torch.where((op == k)[:, None, None], _GEOMETRIC[n](param, h, w), matrix)
        x = affine_nearest(x, matrix, fill)
    for k, n in enumerate(names):
        if n not in _POINTWISE:
            continue
        if subset:
            idx = (op == k).nonzero().squeeze(1)
            if idx.numel():
                x = x.index_copy(0, idx, _POINTWISE[n](x[idx], param[idx]))
        else:
            x = torch.where((op == k).view(-1, 1, 1, 1), _POINTWISE[n](x, param), x)
    return x


def _signed_param(base: Tensor, signed: Tensor, offset: Tensor, axis: Tensor, negate: Tensor,
                  h: int, w: int) -> Tensor:
    """offset + (+-base) * size, with size = W for axis 1, H for axis 2, else 1."""
    size = torch.where(axis == 1, float(w), torch.where(axis == 2, float(h), 1.0))
    sign = torch.where(signed & negate, -1.0, 1.0)
    return offset + sign * base * size


_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")

# ---------------------------------------------------------------------------- AutoAugment

#: Cubuk et al. 2019, CIFAR-10 policy: 25 sub-policies of two (op, probability, magnitude bin 0..9).
AA_CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)), (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)), (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)), (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)
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


@lru_cache(maxsize=8)
def _aa_tables(device: torch.device) -> tuple[Tensor, ...]:
    rows = [[s for s in sub] for sub in AA_CIFAR10_POLICY]
    op = torch.tensor([[_AA_NAMES.index(n) for n, _, _ in r] for r in rows])
    prob = torch.tensor([[p for _, p, _ in r] for r in rows])
    base = torch.tensor([[_aa_magnitude(n, m) for n, _, m in r] for r in rows])
    signed = torch.tensor([[n in _GEOMETRIC or n in _ENHANCE for n, _, _ in r] for r in rows])
    offset = torch.tensor([[float(n in _ENHANCE) for n, _, _ in r] for r in rows])
    axis = torch.tensor([[1 if n == "TranslateX" else 2 if n == "TranslateY" else 0 for n, _, _ in r] for r in rows])
    return tuple(t.to(device) for t in (op, prob, base, signed, offset, axis))


def auto_augment_cifar(x: Tensor, g: torch.Generator, fill: Fill = 128 / 255) -> Tensor:
    """AutoAugment with the CIFAR-10 policy, one uniformly chosen sub-policy per sample.

    Magnitudes follow torchvision's bins (shear 0.3, translate 150/331 of the size, rotate 30 deg,
    enhance factors 1 +- 0.9, posterize 8..4 bits, solarize threshold 255..0 levels, each at bin 9);
    shear, translate, rotate and enhance magnitudes get a random sign. ``fill`` defaults to the
    (128, 128, 128) grey of the common CIFAR implementation. Random draws, all from ``g``:
    ``randint(25, [B])`` for the sub-policy, then ``rand([B, 2, 2])`` (per stage: apply, negate).

    Shape:
        x: [B, C, H, W] in [0, 1]; returns the same shape.
    """
    check_batch(x, g)
    b, _, h, w = x.shape
    op, prob, base, signed, offset, axis = _aa_tables(x.device)
    sub = randint(0, len(AA_CIFAR10_POLICY), g, b, device=x.device)
    u = rand(g, b, 2, 2, device=x.device)
    for s in range(2):
        param = _signed_param(base[sub, s], signed[sub, s], offset[sub, s], axis[sub, s], u[:, s, 1] < 0.5, h, w)
        chosen = torch.where(u[:, s, 0] < prob[sub, s], op[sub, s], -1)
        x = apply_ops(x, _AA_NAMES, chosen, param, fill)
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


@lru_cache(maxsize=8)
def _ra_tables(device: torch.device) -> tuple[Tensor, ...]:
    cols = list(zip(*RA_OPS.values()))
    dtypes = (torch.float32, torch.float32, torch.bool, torch.bool, torch.int64)
    return tuple(torch.tensor(c, dtype=d, device=device) for c, d in zip(cols, dtypes))


def rand_augment(x: Tensor, g: torch.Generator, n: int = 2, m: float = 10.0, mstd: float = 0.0,
                 fill: Fill = 128 / 255, p: float = 0.5, translate_px: float | None = None) -> Tensor:
    """timm-style RandAugment: ``n`` ops drawn uniformly with replacement from the 15 of
    :data:`RA_OPS`, each applied with probability ``p``, per sample.

    The level is ``m`` (``mstd == 0``), ``N(m, mstd^2)`` (``mstd > 0``) or ``U(0, m)``
    (``mstd == inf``), clipped to [0, 10] like timm (so m > 10 acts as 10). timm's level mappings
    are kept, including their quirks: posterize keeps ``int(4 L / 10)`` bits and solarize inverts
    levels >= ``int(256 L / 10)``, so at L = 10 solarize does nothing. Translations reach 0.45 of
    the image side at level 10 (timm's relative TranslateRel); a given ``translate_px`` makes them
    absolute instead, ``translate_px`` pixels at level 10 (timm's TranslateX with
    ``translate_const``; the BCL ImageNet recipe uses ``int(0.45 * 224) = 100``). Random draws,
    all from ``g``: ``randint(15, [B, n])``, ``rand([B, n, 2])`` (apply, negate), then
    ``randn([B, n])`` when ``0 < mstd < inf`` or ``rand([B, n])`` when ``mstd == inf``.

    Shape:
        x: [B, C, H, W] in [0, 1]; returns the same shape.
    """
    check_batch(x, g)
    if n < 0 or not mstd >= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"rand_augment needs n >= 0, mstd >= 0 and p in [0, 1], got n={n}, mstd={mstd}, p={p}")
    if translate_px is not None and not 0.0 <= translate_px < math.inf:
        raise ValueError(f"translate_px must be a finite number of pixels >= 0 (or None), got {translate_px}")
    b, _, h, w = x.shape
    top, offset, signed, integer, axis = _ra_tables(x.device)
    if translate_px is not None:  # absolute shifts: the level-10 value is in pixels, not scaled by the size
        shift = axis > 0
        top, axis = torch.where(shift, float(translate_px), top), torch.where(shift, 0, axis)
    op = randint(0, len(_RA_NAMES), g, b, n, device=x.device)
    u = rand(g, b, n, 2, device=x.device)
    if math.isinf(mstd):
        level = rand(g, b, n, device=x.device) * m
    elif mstd > 0:
        level = m + mstd * randn(g, b, n, device=x.device)
    else:
        level = torch.full((b, n), float(m), device=x.device)
    level = level.clamp(0.0, 10.0)
    for i in range(n):
        k = op[:, i]
        base = level[:, i] / 10.0 * top[k]
        base = torch.where(integer[k], base.floor(), base)
        param = _signed_param(base, signed[k], offset[k], axis[k], u[:, i, 1] < 0.5, h, w)
        x = apply_ops(x, _RA_NAMES, torch.where(u[:, i, 0] < p, k, -1), param, fill)
    return x
