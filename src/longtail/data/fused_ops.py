"""Per-sample op selection for the policies: every sample gets its own op, with a fixed number of launches.

On a GPU a step is bound by kernel launches, so the selection is *fused*: all geometric ops of the batch
are one warp whose per-sample matrix is built from the op choice, and all pointwise ops are one chain of
parametrised passes (posterize, solarize / invert, solarize-add, autocontrast, equalize, then one blend
whose degenerate image is black, the mean grey, the luma or the smoothed image) in which every op not
chosen for a sample is the exact identity. The cost is a fixed number of launches per policy stage
whatever the batch, with no host sync. The kernels are those of :mod:`longtail.data.pil_ops`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from longtail import hostsync
from longtail.data.pil_ops import (_BLENDS, _POINTWISE, GEOMETRIC_OPS, POINTWISE_OPS, Fill, Interp,
                                   _autocontrast_levels, _blend, _c, _equalize_levels, _levels, _pil_luma, _smooth,
                                   _warp_rows, check_interpolation)

__all__ = ["apply_ops"]


def _pointwise_rows(x: Tensor, names: Sequence[str], hit: Tensor, pm: Tensor, param: Tensor) -> Tensor:
    """The pointwise op ``names[k]`` on every sample with ``hit[:, k]``, all of them in one fused chain.

    Where reading is free (CPU) the chain runs on the samples that chose a pointwise op only (three more
    operations, a fraction of the arithmetic); elsewhere on the whole batch, without a host sync."""
    mask = hostsync.constant([float(n in _POINTWISE) for n in names], torch.bool, x.device)
    pointwise = (hit & mask).any(1)
    if hostsync.reads_are_free(x):
        rows = pointwise.nonzero().squeeze(1)
        if rows.numel() == 0:
            return x
        return x.index_copy(0, rows, _pointwise_chain(x[rows], names, hit[rows], pm[rows], param[rows]) / 255.0)
    v = _pointwise_chain(x, names, hit, pm, param)
    return torch.where(pointwise.view(-1, 1, 1, 1), v / 255.0, x)  # untouched samples keep off-grid values


def _geometric_rows(x: Tensor, names: Sequence[str], hit: Tensor, pm: Tensor, fill: Fill, interpolation: Interp) -> Tensor:
    """The geometric op ``names[k]`` on every sample with ``hit[:, k]``: one warp. Where reading is free (CPU)
    it runs on the samples that chose a geometric op only (none: no warp at all, the common case of a
    one-image DataLoader batch); elsewhere on the whole batch (the identity for the others), without a
    host sync."""
    if not hostsync.reads_are_free(x):
        return _warp_rows(x, names, pm, fill, interpolation)
    mask = hostsync.constant([float(n in GEOMETRIC_OPS) for n in names], torch.bool, x.device)
    rows = (hit & mask).any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    if rows.numel() == x.shape[0]:
        return _warp_rows(x, names, pm, fill, interpolation)
    interp = interpolation[rows] if isinstance(interpolation, Tensor) else interpolation
    return x.index_copy(0, rows, _warp_rows(x[rows], names, pm[rows], fill, interp))


def _pointwise_chain(x: Tensor, names: Sequence[str], hit: Tensor, pm: Tensor, param: Tensor) -> Tensor:
    """Levels of every sample after its chosen pointwise op (the identity for the other samples)."""
    col = {n: k for k, n in enumerate(names) if n in _POINTWISE}
    on = {n: hit[:, k].view(-1, 1, 1, 1) for n, k in col.items()}
    par = {n: pm[:, k].view(-1, 1, 1, 1) for n, k in col.items()}
    v = _levels(x)
    if "Posterize" in col:  # step 2 ** (8 - bits) where chosen, 1 (identity) elsewhere
        step = torch.exp2((8.0 - par["Posterize"].floor().clamp(0.0, 8.0)) * on["Posterize"])
        v = (v / step).floor() * step
    if "Solarize" in col or "Invert" in col:  # invert = solarize at 0; 256 leaves every level alone
        t = _c(256.0, v).view(1, 1, 1, 1)
        if "Invert" in col:
            t = torch.where(on["Invert"], _c(0.0, v), t)
        if "Solarize" in col:
            t = torch.where(on["Solarize"], par["Solarize"], t)
        v = torch.where(v >= t, 255.0 - v, v)
    if "SolarizeAdd" in col:  # adding 0 below 128 is the identity
        v = torch.where(v < 128.0, (v + par["SolarizeAdd"]).clamp(max=255.0), v)
    if "AutoContrast" in col:
        v = _autocontrast_levels(v, on["AutoContrast"])
    if "Equalize" in col:
        v = _equalize_levels(v, on["Equalize"])
    blends = [n for n in _BLENDS if n in col]
    if blends:  # one blend; its factor is 1 (the identity on integer levels) where no blend was chosen
        if v.shape[2] < 3 or v.shape[3] < 3:
            blends = [n for n in blends if n != "Sharpness"]
        deg = torch.zeros_like(v[:, :1, :1, :1])
        luma = _pil_luma(v) if "Color" in blends or "Contrast" in blends else None
        if "Contrast" in blends:
            deg = torch.where(on["Contrast"], (luma.mean((1, 2, 3), keepdim=True) + 0.5).floor(), deg)
        if "Color" in blends:
            deg = torch.where(on["Color"], luma, deg)
        if "Sharpness" in blends:
            deg = torch.where(on["Sharpness"], _smooth(v), deg)
        chosen = on[blends[0]]
        for n in blends[1:]:
            chosen = chosen | on[n]
        v = _blend(deg, v, torch.where(chosen, param.view(-1, 1, 1, 1), _c(1.0, v)))
    return v


def apply_ops(x: Tensor, names: Sequence[str], op: Tensor, param: Tensor, fill: Fill = 0.0,
              subset: bool = False, interpolation: Interp = "nearest") -> Tensor:
    """Apply op ``names[op[i]]`` with argument ``param[i]`` to sample i (``op[i] == -1``: unchanged).

    ``interpolation`` resamples the geometric ops: ``"nearest"``, ``"bilinear"``, ``"bicubic"``, or a
    per-sample choice (bool [B], True = bicubic, False = bilinear; see
    :func:`longtail.data.pil_ops.draw_interpolation` for ``"random"``).

    All geometric ops of the batch are one warp (identity matrix for the other samples), and all
    pointwise ops one fused chain: a fixed number of operations per call, no host sync on a GPU (on a
    CPU the warp and the chain skip the samples without a geometric or pointwise op).
    ``subset=True`` instead runs each pointwise op on its own selected samples (boolean indexing: a host
    sync per op on a GPU), at two to three times the operations. All paths give the same result.

    Shape:
        x: [B, C, H, W]; op: int64 [B]; param: float [B]; returns [B, C, H, W].
    """
    unknown = [n for n in names if n not in GEOMETRIC_OPS and n not in _POINTWISE]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; valid: {sorted(GEOMETRIC_OPS + POINTWISE_OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"apply_ops needs distinct op names, got {list(names)}")
    if isinstance(interpolation, str) and check_interpolation(interpolation) == "random":
        raise ValueError("apply_ops needs the per-sample choice of 'random' interpolation: draw it with "
                         "pil_ops.draw_interpolation and pass the bool tensor")
    kinds = hostsync.constant(range(len(names)), torch.int64, x.device)
    hit = op.view(-1, 1) == kinds  # [B, K]: which op each sample chose
    param = param.to(torch.float32)
    pm = param.view(-1, 1) * hit  # [B, K]: its parameter in the chosen op's column, 0 elsewhere
    if any(n in GEOMETRIC_OPS for n in names):
        x = _geometric_rows(x, names, hit, pm, fill, interpolation)
    if not any(n in _POINTWISE for n in names):
        return x
    if not subset:
        return _pointwise_rows(x, names, hit, pm, param)
    for k, n in enumerate(names):
        if n in _POINTWISE:
            idx = (op == k).nonzero().squeeze(1)
            if idx.numel():
                x = x.index_copy(0, idx, _POINTWISE[n](x[idx], param[idx]))
    return x
