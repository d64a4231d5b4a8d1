"""PIL-exact image ops on float batches, and their per-sample selection (the AutoAugment/RandAugment kernels).

Every kernel works on a whole float batch ``x`` [B, C, H, W] in [0, 1] (C = 1 or 3) with one magnitude
per sample. The kernels follow PIL (``ImageOps``, ``ImageEnhance``, ``Image.transform``), the library the
policies were searched with:

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

:func:`longtail.data.fused_ops.apply_ops` gives every sample its own op, with a fused selection.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from longtail import hostsync

__all__ = [
    "check_batch", "fill_tensor", "affine_nearest", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
    "invert", "posterize", "solarize", "solarize_add", "autocontrast", "equalize", "brightness", "color",
    "contrast", "sharpness", "GEOMETRIC_OPS", "POINTWISE_OPS",
]

Fill = Union[float, Sequence[float]]
Param = Union[float, Tensor]


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


def _c(value: float, x: Tensor) -> Tensor:
    """A one-element constant on x's device (broadcasts like a scalar, without a per-call copy or fill)."""
    return hostsync.constant(value, x.dtype, x.device)


def _vec(p: Param, x: Tensor) -> Tensor:
    """A per-sample parameter as a float32 tensor [B] on x's device."""
    if not isinstance(p, Tensor):
        return hostsync.constant(float(p), torch.float32, x.device).expand(x.shape[0])
    t = p.to(device=x.device, dtype=torch.float32)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"a per-sample parameter must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t


def _col(p: Param, x: Tensor) -> Tensor:
    return _vec(p, x).view(-1, 1, 1, 1)


def fill_tensor(fill: Fill, x: Tensor) -> Tensor:
    """``fill`` (one value or one per channel, in [0, 1] units) as a [1, C, 1, 1] tensor."""
    if isinstance(fill, Tensor):
        f = fill.to(dtype=x.dtype, device=x.device).flatten()
    else:  # Python / NumPy numbers: built once per device, not copied to it on every call
        f = hostsync.constant(np.asarray(fill, dtype=np.float64).reshape(-1).tolist(), x.dtype, x.device)
    if f.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill must have 1 or {x.shape[1]} values for a {x.shape[1]}-channel batch, got {f.numel()}")
    return f.view(1, -1, 1, 1)


def _levels(x: Tensor) -> Tensor:
    """8-bit levels of a [0, 1] batch, as floats (exact integers)."""
    return (x * 255.0).round().clamp(0.0, 255.0)


def _pil_luma(v: Tensor) -> Tensor:
    """PIL's RGB -> L on levels, (19595 R + 38470 G + 7471 B + 2**15) >> 16; [B, 1, H, W].

    Every partial sum stays below 2**24, so float32 computes it exactly, in any order.
    """
    if v.shape[1] == 1:
        return v
    w = hostsync.constant((19595.0, 38470.0, 7471.0), v.dtype, v.device).view(1, 3, 1, 1)
    return (((v * w).sum(1, keepdim=True) + 32768.0) * (1.0 / 65536.0)).floor()  # a power of 2: exact


def _blend(degenerate: Tensor, v: Tensor, f: Tensor) -> Tensor:
    """PIL ``Image.blend(degenerate, image, f)`` on levels: truncating, clipped to 0..255 (levels out).

    With ``f == 1`` it is the exact identity on integer levels."""
    return (degenerate + f * (v - degenerate)).clamp(0.0, 255.0).floor()


def _smooth(v: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, /13, rounded) on levels; the 1-pixel border is left unfiltered."""
    # kernel = 3x3 box + 4 x centre; two shifted sums are much cheaper than a 1-channel conv on CPU, and exact
    # where a GPU convolution may run in TF32
    rows = v[..., :-2, :] + v[..., 1:-1, :] + v[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = v.clone()
    # x * (1/13) rounds like x / 13 for integers x < 2**20: x / 13 is never within 2**-19 of a half-integer
    smooth[..., 1:-1, 1:-1] = ((box + 4.0 * v[..., 1:-1, 1:-1]) * (1.0 / 13.0)).round()
    return smooth


def _autocontrast_levels(v: Tensor, active: Tensor | None = None) -> Tensor:
    """Autocontrast on levels, ``floor((v - lo) * 255 / (hi - lo))`` in exact integer arithmetic; rows where
    ``active`` is False ([B, 1, 1, 1] bool) are left unchanged."""
    vi = v.int()
    lo, hi = vi.amin((2, 3), keepdim=True), vi.amax((2, 3), keepdim=True)
    if active is not None:  # identity rows: the map of [0, 255] onto itself
        lo = torch.where(active, lo, hostsync.constant(0, torch.int32, v.device))
        hi = torch.where(active, hi, hostsync.constant(255, torch.int32, v.device))
    q = torch.div((vi - lo) * 255, (hi - lo).clamp_min(1), rounding_mode="floor")
    return torch.where(hi > lo, q, vi).to(v.dtype)


def _equalize_levels(v: Tensor, active: Tensor | None = None) -> Tensor:
    """Equalize on levels (PIL's lookup table), one batched histogram; rows where ``active`` is False
    ([B, 1, 1, 1] bool) are left unchanged."""
    b, c, h, w = v.shape
    vi = v.long().view(b * c, h * w)
    cap = 1 << (b * c - 1).bit_length()  # one cached table per power of two: CPU subsets vary in size
    offset = hostsync.cached(("histogram_offsets", cap), v.device,
                             lambda d: torch.arange(cap, device=d).view(cap, 1) * 256)[:b * c]
    hist = torch.zeros(b * c * 256, dtype=torch.int64, device=v.device)
    ones = hostsync.constant(1, torch.int64, v.device).expand(b * c * h * w)
    hist = hist.scatter_add_(0, (vi + offset).view(-1), ones).view(b * c, 256)
    top_count = hist.gather(1, vi.amax(1, keepdim=True))
    step = (h * w - top_count) // 255
    below = hist.cumsum(1) - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp(max=255)
    keep = step > 0
    if active is not None:
        keep = keep & active.view(b, 1).expand(b, c).reshape(b * c, 1)
    return torch.where(keep, lut.gather(1, vi), vi).view(b, c, h, w).to(v.dtype)


# ------------------------------------------------------------------------------- geometric ops


def _warp(x: Tensor, a: Tensor, b_: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor, fill: Fill) -> Tensor:
    """Nearest-neighbour warp: output centre (u, v) reads input (floor(a u + b v + c), floor(d u + e v + f)).

    The coefficients are per-sample [B, 1, 1] float32 tensors."""
    b, ch, h, w = x.shape
    us = hostsync.cached(("pixel_centres", w), x.device, lambda d: torch.arange(w, dtype=torch.float32, device=d) + 0.5)
    vs = hostsync.cached(("pixel_centres", h), x.device, lambda d: torch.arange(h, dtype=torch.float32, device=d) + 0.5)
    vs = vs.view(h, 1)
    cx = (a * us + b_ * vs + c).floor()
    cy = (d * us + e * vs + f).floor()
    ccx, ccy = cx.clamp(0, w - 1), cy.clamp(0, h - 1)
    inside = (ccx == cx) & (ccy == cy)
    index = (ccy * w + ccx).long().view(b, 1, h * w).expand(b, ch, h * w)  # exact: below 2**24
    out = x.reshape(b, ch, h * w).gather(2, index).view(b, ch, h, w)
    return torch.where(inside[:, None], out, fill_tensor(fill, x))


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
    m = matrix.to(device=x.device, dtype=torch.float32).reshape(-1, 6, 1, 1)
    return _warp(x, *m.unbind(1), fill)


def _rotation(deg: Tensor, h: int, w: int) -> tuple[Tensor, ...]:
    """Coefficients (a, b, c, d, e, f) of ``Image.rotate`` by ``deg`` degrees counter-clockwise about the
    centre (the inverse map); deg = 0 gives the exact identity."""
    phi = deg * (-torch.pi / 180.0)
    cos, sin = phi.cos(), phi.sin()
    cx, cy = w / 2.0, h / 2.0
    return cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy


def _geometric(x: Tensor, name: str, p: Param, fill: Fill) -> Tensor:
    return _warp_rows(x, (name,), _vec(p, x)[:, None], fill)


def shear_x(x: Tensor, factor: Param, fill: Fill = 0.0) -> Tensor:
    """Horizontal shear, PIL data (1, factor, 0, 0, 1, 0). Shape: [B, C, H, W] -> same."""
    return _geometric(x, "ShearX", factor, fill)


def shear_y(x: Tensor, factor: Param, fill: Fill = 0.0) -> Tensor:
    """Vertical shear, PIL data (1, 0, 0, factor, 1, 0). Shape: [B, C, H, W] -> same."""
    return _geometric(x, "ShearY", factor, fill)


def translate_x(x: Tensor, pixels: Param, fill: Fill = 0.0) -> Tensor:
    """Horizontal shift, PIL data (1, 0, pixels, 0, 1, 0). Shape: [B, C, H, W] -> same."""
    return _geometric(x, "TranslateX", pixels, fill)


def translate_y(x: Tensor, pixels: Param, fill: Fill = 0.0) -> Tensor:
    """Vertical shift, PIL data (1, 0, 0, 0, 1, pixels). Shape: [B, C, H, W] -> same."""
    return _geometric(x, "TranslateY", pixels, fill)


def rotate(x: Tensor, degrees: Param, fill: Fill = 0.0) -> Tensor:
    """Counter-clockwise rotation about the centre, like ``Image.rotate``. Shape: [B, C, H, W] -> same."""
    return _geometric(x, "Rotate", degrees, fill)


GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _warp_rows(x: Tensor, names: Sequence[str], pm: Tensor, fill: Fill) -> Tensor:
    """One warp for the whole batch: column k of ``pm`` [B, K] is the parameter of op ``names[k]`` for the
    samples that chose it and 0 elsewhere; a sample with no geometric op gets the exact identity."""
    h, w = x.shape[2:]
    col = {n: pm[:, k].view(-1, 1, 1) for k, n in enumerate(names) if n in GEOMETRIC_OPS}
    if "Rotate" in col:  # rotation by 0 degrees is the identity (1, -0, 0; 0, 1, 0)
        a, b_, c, d, e, f = _rotation(col["Rotate"], h, w)
    else:
        zero = torch.zeros_like(next(iter(col.values())))
        a = e = _c(1.0, pm).view(1, 1, 1)
        b_ = c = d = f = zero
    # shears and shifts add their parameter to one coefficient (0 where another op was chosen)
    b_ = b_ + col["ShearX"] if "ShearX" in col else b_
    d = d + col["ShearY"] if "ShearY" in col else d
    c = c + col["TranslateX"] if "TranslateX" in col else c
    f = f + col["TranslateY"] if "TranslateY" in col else f
    return _warp(x, a, b_, c, d, e, f, fill)


# ------------------------------------------------------------------------------- pointwise ops


def invert(x: Tensor) -> Tensor:
    """``ImageOps.invert`` (on 8-bit levels). Shape: [B, C, H, W] -> same."""
    return (255.0 - _levels(x)) / 255.0


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

    Computes ``floor((v - lo) * 255 / (hi - lo))`` exactly, in integer arithmetic; PIL's
    double-precision lookup table can land one level lower where the quotient is an exact integer.
    Shape: same as x.
    """
    return _autocontrast_levels(_levels(x)) / 255.0


def equalize(x: Tensor) -> Tensor:
    """``ImageOps.equalize``, per sample and channel, from one batched histogram.

    The histograms of all B*C channels are one ``scatter_add_`` over offset indices (no host sync,
    unlike ``bincount``). The lookup table is PIL's: ``step = (N - count of the top level) // 255``,
    ``lut[i] = (step // 2 + #pixels below i) // step``, identity when ``step == 0``. Shape: same as x.
    """
    return _equalize_levels(_levels(x)) / 255.0


def brightness(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black. Shape: same as x."""
    v = _levels(x)
    return _blend(torch.zeros_like(v), v, _col(factor, x)) / 255.0


def color(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Color``: blend with the PIL luma image (identity for C = 1). Shape: same as x."""
    v = _levels(x)
    return _blend(_pil_luma(v), v, _col(factor, x)) / 255.0


def contrast(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the rounded mean of the PIL luma. Shape: same as x."""
    v = _levels(x)
    mean = (_pil_luma(v).mean((1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(mean, v, _col(factor, x)) / 255.0


def sharpness(x: Tensor, factor: Param) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with PIL's SMOOTH filter (3x3, centre 5, /13, rounded),
    which leaves the 1-pixel border unfiltered. Shape: same as x."""
    v = _levels(x)
    if v.shape[2] < 3 or v.shape[3] < 3:
        return v / 255.0
    return _blend(_smooth(v), v, _col(factor, x)) / 255.0


_POINTWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": lambda x, p: autocontrast(x), "Equalize": lambda x, p: equalize(x),
    "Invert": lambda x, p: invert(x), "Posterize": posterize, "Solarize": solarize,
    "SolarizeAdd": solarize_add, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Sharpness": sharpness,
}
POINTWISE_OPS = tuple(_POINTWISE)
_BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
