"""PIL-exact image ops on float batches, and their per-sample selection (the AutoAugment/RandAugment kernels).

Every kernel works on a whole float batch ``x`` [B, C, H, W] in [0, 1] (C = 1 or 3) with one magnitude
per sample. The kernels follow PIL (``ImageOps``, ``ImageEnhance``, ``Image.transform``), the library the
policies were searched with:

* Pointwise ops emulate 8-bit arithmetic: they work on the levels ``round(x * 255)`` and return
  ``levels / 255``. Thresholds and additive amounts are in levels (0..255). Blends (Brightness,
  Color, Contrast, Sharpness) truncate like PIL's ``Image.blend``, and Color/Contrast use PIL's
  fixed-point luma, so they match PIL exactly up to float rounding at exact integers.
* Geometric ops use PIL's convention: a 2x3 matrix maps the centre of each output pixel
  ``(i + 0.5, j + 0.5)`` to an input position; pixels that map outside the image take ``fill``.
  Resampling (``interpolation``) is Pillow's NEAREST, BILINEAR or BICUBIC filter of
  ``Image.transform`` (or ``"random"``: bilinear or bicubic per sample), reproduced exactly:
  nearest follows Pillow's two code paths (float64 for shifts, 16.16 fixed point for rotations and
  shears), bilinear and bicubic (a = -1) run in float64 in Pillow's order of operations and truncate
  to 8 bits. Sampling is a ``gather`` / ``take`` rather than ``grid_sample``, whose nearest mode
  rounds half to even and whose bicubic uses a = -0.75. Shear is about the top-left corner (as in
  the AutoAugment code), rotation about the image centre (as in ``Image.rotate``). Fractional
  translations are allowed (torchvision's tensor path instead truncates them to whole pixels).

:func:`longtail.data.fused_ops.apply_ops` gives every sample its own op, with a fused selection.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from longtail import hostsync
from longtail.data.draws import rand

__all__ = [
    "check_batch", "fill_tensor", "affine", "affine_nearest", "INTERPOLATIONS", "check_interpolation",
    "draw_interpolation", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
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

#: resampling of the geometric ops: Pillow's NEAREST, BILINEAR and BICUBIC filters of ``Image.transform``,
#: and "random" (bilinear or bicubic drawn per sample with equal probability, timm's per-call choice)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "random")

#: an interpolation of the warp kernels: a mode name, or a per-sample choice (bool [B], True = bicubic)
Interp = Union[str, Tensor]


def check_interpolation(interpolation: str) -> str:
    """Return ``interpolation`` if it is one of :data:`INTERPOLATIONS`, else raise a one-line ValueError."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)} (got {interpolation!r})")
    return interpolation


def draw_interpolation(interpolation: str, g: torch.Generator | None, b: int, *rest: int, device) -> Interp:
    """The interpolation the kernels get: the mode itself, or for ``"random"`` a per-sample choice drawn from
    ``g`` (``rand(g, [B, *rest]) < 0.5``: True = bicubic, False = bilinear; no host sync)."""
    check_interpolation(interpolation)
    if interpolation != "random":
        return interpolation
    if g is None:
        raise ValueError("interpolation='random' draws bilinear or bicubic per sample: pass the generator g")
    return rand(g, b, *rest, device=device) < 0.5


def _centres(x: Tensor) -> tuple[Tensor, Tensor]:
    """The output pixel centres u = i + 0.5 [W] and v = j + 0.5 [H, 1], float64 on x's device."""
    h, w = x.shape[2:]
    us = hostsync.cached(("pixel_centres64", w), x.device, lambda d: torch.arange(w, dtype=torch.float64, device=d) + 0.5)
    vs = hostsync.cached(("pixel_centres64", h), x.device, lambda d: torch.arange(h, dtype=torch.float64, device=d) + 0.5)
    return us, vs.view(h, 1)


def _fix(v: Tensor) -> Tensor:
    """Pillow's 16.16 fixed point of a coefficient, floor(v·65536 + 0.5) (an integer, kept in float64)."""
    return (v * 65536.0 + 0.5).floor()


def _nearest_source(x: Tensor, a: Tensor, b_: Tensor, c: Tensor, d: Tensor, e: Tensor,
                    f: Tensor) -> tuple[Tensor, Tensor]:
    """The input pixel (column, row) that Pillow's NEAREST ``Image.transform(AFFINE)`` reads for each output
    pixel, each int64 [B, H, W] (outside the image where it takes ``fill``).

    Pillow has two nearest paths, chosen per image. With rotation or shear (b or d nonzero) it uses 16.16
    fixed point (``affine_fixed``): with A = floor(65536·a + 0.5) for a, b, d, e, and C = A(c + a/2 + b/2),
    F = A(f + d/2 + e/2) likewise, the column is (C + i·A + j·B) >> 16 and the row (F + i·D + j·E) >> 16.
    Without (``ImagingScaleAffine``) it reads column floor(c + a/2 + i·a) in float64, adding a once per
    column; for a = ±1 (the only scale any op here produces) that is floor(c + a/2) + i·a, which the same
    integer formula gives with C = 65536·floor(c + a/2). One formula for every sample, chosen per sample
    by its coefficients (so no per-pixel selection): exact for all our ops; for a general scale matrix the
    scale path is approximated in 16.16 fixed point."""
    h, w = x.shape[2:]
    scale = (b_ == 0) & (d == 0)  # [B, 1, 1]
    c0 = torch.where(scale, (c + a * 0.5).floor() * 65536.0, (c + a * 0.5 + b_ * 0.5) * 65536.0 + 0.5).floor()
    f0 = torch.where(scale, (f + e * 0.5).floor() * 65536.0, (f + d * 0.5 + e * 0.5) * 65536.0 + 0.5).floor()
    # integers below 2**53 in float64 (exact), and a division by 2**16 (exact) then floor: Pillow's ">> 16"
    ii = hostsync.cached(("pixel_index64", w), x.device, lambda dv: torch.arange(w, dtype=torch.float64, device=dv))
    jj = hostsync.cached(("pixel_index64", h), x.device,
                         lambda dv: torch.arange(h, dtype=torch.float64, device=dv)).view(h, 1)
    col = (((c0 + jj * _fix(b_)) + ii * _fix(a)) * (1.0 / 65536.0)).floor().long()
    row = (((f0 + ii * _fix(d)) + jj * _fix(e)) * (1.0 / 65536.0)).floor().long()
    return col, row


def _warp(x: Tensor, a: Tensor, b_: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor, fill: Fill,
          interpolation: Interp = "nearest") -> Tensor:
    """Affine warp: output centre (u, v) reads input position (a u + b v + c, d u + e v + f).

    The coefficients are per-sample [B, 1, 1] float64 tensors (Pillow computes in double precision).
    Nearest reads the pixel :func:`_nearest_source` gives; the other modes are :func:`_interpolate`'s."""
    if isinstance(interpolation, Tensor) or interpolation != "nearest":
        us, vs = _centres(x)
        return _interpolate(x, a * us + b_ * vs + c, d * us + e * vs + f, fill, interpolation)
    b, ch, h, w = x.shape
    cx, cy = _nearest_source(x, a, b_, c, d, e, f)
    ccx, ccy = cx.clamp(0, w - 1), cy.clamp(0, h - 1)
    inside = (ccx == cx) & (ccy == cy)
    index = (ccy * w + ccx).view(b, 1, h * w).expand(b, ch, h * w)
    out = x.reshape(b, ch, h * w).gather(2, index).view(b, ch, h, w)
    return torch.where(inside[:, None], out, fill_tensor(fill, x))


def _interpolate(x: Tensor, sx: Tensor, sy: Tensor, fill: Fill, interpolation: Interp) -> Tensor:
    """Pillow's BILINEAR / BICUBIC filters of ``Image.transform`` at input positions (sx, sy) [B, H, W].

    Pillow (``Geometry.c``, checked against Pillow 13 on impulse images): a position outside
    [0, W) x [0, H) takes ``fill``; otherwise, with xs = sx − 0.5, x0 = floor(xs), t = xs − x0 (and the
    same along y), it reads the 2 (bilinear) or 4 (bicubic) nearest columns x0 − 1 … x0 + 2 of 2 or 4
    rows, clamping indices to the image (edge pixels repeat), and interpolates first along x in each
    row, then along y. Bilinear is v0 + t·(v1 − v0). Bicubic is the cubic convolution with a = −1 (not
    the a = −0.5 of Pillow's resize), in Pillow's Horner form
    v1 + t·((v2 − v0) + t·((2(v0 − v1) + v2 − v3) + t·(v1 − v0 − v2 + v3))) for taps v0 … v3. There is no
    antialiasing: a pure affine transform samples one point per output pixel. The result on 8-bit
    levels is clipped to [0, 255] and truncated (not rounded), as Pillow stores it.

    Positions and interpolation run in float64 in Pillow's order of operations, so the levels are
    Pillow's (tests/test_interpolation.py measures it). The input is read as 8-bit levels
    (round(x·255)), like the pointwise ops.

    ``interpolation`` is ``"bilinear"``, ``"bicubic"`` or a per-sample choice (bool [B], True = bicubic):
    then both are computed on the 4 x 4 taps and selected per sample, each sample bit for bit what its
    mode gives on its own (where reading is free, on a CPU, each group of samples runs its own filter
    instead). The number of operations is fixed (a loop over the 2 or 4 rows of taps, never over
    samples).
    """
    b, ch, h, w = x.shape
    if isinstance(interpolation, Tensor) and interpolation.shape != (b,):
        raise ValueError(f"a per-sample interpolation must be a bool tensor [{b}], got {tuple(interpolation.shape)}")
    if isinstance(interpolation, Tensor) and hostsync.reads_are_free(x):  # CPU: each sample only its own filter
        out = torch.empty_like(x)
        for mode, rows in (("bicubic", interpolation.nonzero()), ("bilinear", (~interpolation).nonzero())):
            rows = rows.squeeze(1)
            if rows.numel():
                out.index_copy_(0, rows, _interpolate(x[rows], sx[rows], sy[rows], fill, mode))
        return out
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    xs, ys = sx - 0.5, sy - 0.5
    x0, y0 = xs.floor(), ys.floor()
    tx, ty = xs - x0, ys - y0
    linear = isinstance(interpolation, str) and interpolation == "bilinear"
    offsets = (0, 1) if linear else (-1, 0, 1, 2)
    cubic = None  # [B, 1, 1, 1] bool: True (bicubic) or False (bilinear), for a per-sample choice
    if isinstance(interpolation, Tensor):
        cubic = interpolation.to(device=x.device, dtype=torch.bool).view(b, 1, 1, 1)
    cols = torch.stack([(x0 + o).clamp(0, w - 1) for o in offsets], 1).long()  # [B, T, H, W]
    levels = _levels(x).to(torch.float64)
    # offset of each (sample, channel) plane in the flat levels: one ``take`` reads every tap of a row (much
    # faster on a CPU than ``gather`` with an index expanded over the channels)
    planes = torch.arange(0, b * ch * h * w, h * w, device=x.device).view(b, ch, 1, 1, 1)

    def combine(v: list[Tensor], t: Tensor) -> Tensor:
        if linear:
            return v[0] + t * (v[1] - v[0])
        v0, v1, v2, v3 = v
        bicubic = v1 + t * ((v2 - v0) + t * ((2.0 * (v0 - v1) + v2 - v3) + t * (v1 - v0 - v2 + v3)))
        if cubic is None:
            return bicubic
        # per sample: the same arithmetic as either mode on its own, so each sample equals it bit for bit
        return torch.where(cubic, bicubic, v1 + t * (v2 - v1))

    rows = []
    for o in offsets:
        r = (y0 + o).clamp(0, h - 1).long()
        index = (r.unsqueeze(1) * w + cols).unsqueeze(1) + planes  # [B, C, T, H, W]
        taps = levels.take(index).unbind(2)
        rows.append(combine(list(taps), tx.unsqueeze(1)))
    v = (combine(rows, ty.unsqueeze(1)).clamp(0.0, 255.0).floor() / 255.0).to(x.dtype)
    return torch.where(inside[:, None], v, fill_tensor(fill, x))


def affine(x: Tensor, matrix: Tensor, fill: Fill = 0.0, interpolation: str = "nearest",
           g: torch.Generator | None = None) -> Tensor:
    """Affine warp with PIL's ``Image.transform(AFFINE, resample=...)`` semantics.

    Args:
        x: batch in [0, 1].
        matrix: per-sample (a, b, c; d, e, f): output pixel centre (u, v) reads input position
            ``(a u + b v + c, d u + e v + f)``, in pixel units (nearest: pixel ``(floor, floor)``).
        fill: value(s) for pixels that map outside the image.
        interpolation: one of :data:`INTERPOLATIONS` (see :func:`_interpolate` for bilinear and bicubic);
            ``"random"`` draws bilinear or bicubic per sample from ``g``.

    Shape:
        x: [B, C, H, W]; matrix: [B, 2, 3]; returns [B, C, H, W].
    """
    interp = draw_interpolation(interpolation, g, x.shape[0], device=x.device)
    m = matrix.to(device=x.device, dtype=torch.float64).reshape(-1, 6, 1, 1)
    return _warp(x, *m.unbind(1), fill, interp)


def affine_nearest(x: Tensor, matrix: Tensor, fill: Fill = 0.0) -> Tensor:
    """Nearest-neighbour :func:`affine`: output centre (u, v) reads input pixel
    ``(floor(a u + b v + c), floor(d u + e v + f))``. Shape: x [B, C, H, W], matrix [B, 2, 3] -> x's."""
    return affine(x, matrix, fill)


def _split(a: Tensor) -> tuple[Tensor, Tensor]:
    """Dekker's split of float64 values into two halves of at most 26 significant bits each."""
    c = a * 134217729.0  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _round15(v: Tensor) -> Tensor:
    """Python's ``round(v, 15)`` for float64 ``v`` (|v| <= 1): the exact product v·10^15 (Dekker's
    two-product: p plus its rounding error) rounded half to even, then divided by 10^15 (a correctly
    rounded division, as Python's result is the double nearest the rounded decimal)."""
    scale = 1e15
    p = v * scale
    vh, vl = _split(v)
    sh, sl = _split(torch.full_like(v, scale))
    err = ((vh * sh - p) + vh * sl + vl * sh) + vl * sl  # v·10^15 = p + err exactly
    whole = p.floor()
    frac = (p - whole) + err  # p - whole is exact (|p| < 2**50, a multiple of 1/8) and |err| <= 1/16
    up = (frac > 0.5) | ((frac == 0.5) & (whole.remainder(2.0) == 1.0))
    return (whole + up.to(v.dtype)) / scale


def _rotation(deg: Tensor, h: int, w: int) -> tuple[Tensor, ...]:
    """Coefficients (a, b, c, d, e, f) of ``Image.rotate`` by ``deg`` degrees counter-clockwise about the
    centre (the inverse map), in float64 as Pillow computes them: the angle modulo 360, cos and sin
    rounded to 15 decimals, then c = cos·(−cx) + sin·(−cy) + cx and f = −sin·(−cx) + cos·(−cy) + cy.
    deg = 0 gives the exact identity, 180 the exact half turn."""
    phi = -(deg.double().remainder(360.0) * (math.pi / 180.0))
    cos, sin = _round15(phi.cos()), _round15(phi.sin())
    cx, cy = w / 2.0, h / 2.0
    return cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy


def _geometric(x: Tensor, name: str, p: Param, fill: Fill, interpolation: str, g: torch.Generator | None) -> Tensor:
    interp = draw_interpolation(interpolation, g, x.shape[0], device=x.device)
    return _warp_rows(x, (name,), _vec(p, x)[:, None], fill, interp)


def shear_x(x: Tensor, factor: Param, fill: Fill = 0.0, interpolation: str = "nearest",
            g: torch.Generator | None = None) -> Tensor:
    """Horizontal shear, PIL data (1, factor, 0, 0, 1, 0). ``interpolation``: see :func:`affine`.
    Shape: [B, C, H, W] -> same."""
    return _geometric(x, "ShearX", factor, fill, interpolation, g)


def shear_y(x: Tensor, factor: Param, fill: Fill = 0.0, interpolation: str = "nearest",
            g: torch.Generator | None = None) -> Tensor:
    """Vertical shear, PIL data (1, 0, 0, factor, 1, 0). ``interpolation``: see :func:`affine`.
    Shape: [B, C, H, W] -> same."""
    return _geometric(x, "ShearY", factor, fill, interpolation, g)


def translate_x(x: Tensor, pixels: Param, fill: Fill = 0.0, interpolation: str = "nearest",
                g: torch.Generator | None = None) -> Tensor:
    """Horizontal shift, PIL data (1, 0, pixels, 0, 1, 0). ``interpolation``: see :func:`affine`.
    Shape: [B, C, H, W] -> same."""
    return _geometric(x, "TranslateX", pixels, fill, interpolation, g)


def translate_y(x: Tensor, pixels: Param, fill: Fill = 0.0, interpolation: str = "nearest",
                g: torch.Generator | None = None) -> Tensor:
    """Vertical shift, PIL data (1, 0, 0, 0, 1, pixels). ``interpolation``: see :func:`affine`.
    Shape: [B, C, H, W] -> same."""
    return _geometric(x, "TranslateY", pixels, fill, interpolation, g)


def rotate(x: Tensor, degrees: Param, fill: Fill = 0.0, interpolation: str = "nearest",
           g: torch.Generator | None = None) -> Tensor:
    """Counter-clockwise rotation about the centre, like ``Image.rotate(degrees, resample)``.
    ``interpolation``: see :func:`affine`. Shape: [B, C, H, W] -> same."""
    return _geometric(x, "Rotate", degrees, fill, interpolation, g)


GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _warp_rows(x: Tensor, names: Sequence[str], pm: Tensor, fill: Fill, interpolation: Interp = "nearest") -> Tensor:
    """One warp for the whole batch: column k of ``pm`` [B, K] is the parameter of op ``names[k]`` for the
    samples that chose it and 0 elsewhere; a sample with no geometric op gets the exact identity (with
    bilinear or bicubic resampling, which reads 8-bit levels, such a sample, and one whose geometric
    parameter is 0, is passed through unchanged)."""
    h, w = x.shape[2:]
    col = {n: pm[:, k].view(-1, 1, 1).double() for k, n in enumerate(names) if n in GEOMETRIC_OPS}
    if "Rotate" in col:  # rotation by 0 degrees is the identity (1, -0, 0; 0, 1, 0)
        a, b_, c, d, e, f = _rotation(col["Rotate"], h, w)
    else:
        zero = torch.zeros_like(next(iter(col.values())))
        a = e = hostsync.constant(1.0, torch.float64, x.device).view(1, 1, 1)
        b_ = c = d = f = zero
    # shears and shifts add their parameter to one coefficient (0 where another op was chosen)
    b_ = b_ + col["ShearX"] if "ShearX" in col else b_
    d = d + col["ShearY"] if "ShearY" in col else d
    c = c + col["TranslateX"] if "TranslateX" in col else c
    f = f + col["TranslateY"] if "TranslateY" in col else f
    out = _warp(x, a, b_, c, d, e, f, fill, interpolation)
    if isinstance(interpolation, str) and interpolation == "nearest":
        return out
    geometric = [k for k, n in enumerate(names) if n in GEOMETRIC_OPS]
    moved = (pm[:, geometric] != 0).any(1)
    return torch.where(moved.view(-1, 1, 1, 1), out, x)


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
