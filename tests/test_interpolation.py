"""Resampling of the batched geometric ops against Pillow's ``Image.transform(AFFINE, resample=...)`` /
``Image.rotate`` (the calls torchvision's PIL path and timm make), per mode: nearest, bilinear, bicubic, and
the per-sample "random" choice of BCL's large-image RandAugment.

Measured on the images and parameters below (Pillow 13, CPU): every mode gives Pillow's 8-bit levels
exactly (0 differing pixels). The bilinear / bicubic assertions allow 1 level on at most 0.01 % of the
pixels (float64 rounding of the positions near a truncation boundary); nearest must be exact.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import augment_policies as P
from longtail.data import pil_ops
from longtail.data.views import RANDAUGMENT_GEOMETRY, build_torchvision_transform
from test_augment import _close_to_pil, _pil_op

FILL = (100, 120, 140)
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
AFFINE_DATA = {"shear_x": lambda v: (1, v, 0, 0, 1, 0), "shear_y": lambda v: (1, 0, 0, v, 1, 0),
               "translate_x": lambda v: (1, 0, v, 0, 1, 0), "translate_y": lambda v: (1, 0, 0, 0, 1, v)}
GEOMETRIC = {"ShearX": "shear_x", "ShearY": "shear_y", "TranslateX": "translate_x", "TranslateY": "translate_y"}
CASES = [("rotate", (-29.3, 45.0, 90.0, 180.0)), ("shear_x", (0.27, -0.13)), ("shear_y", (-0.3,)),
         ("translate_x", (-10.45, 0.5, 7.0)), ("translate_y", (2.71,))]


def _images(b, h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8)


def _float(arr):
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def _levels(x):
    return (x * 255).round().to(torch.int64).permute(0, 2, 3, 1).numpy()


def _pil(a, op, v, mode):
    """Pillow on one uint8 image [H, W, C] with the float32 value our op receives."""
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    v = float(np.float32(v))
    fill = FILL[0] if a.shape[-1] == 1 else FILL
    if op == "rotate":
        out = im.rotate(v, resample=RESAMPLE[mode], fillcolor=fill)
    else:
        out = im.transform(im.size, Image.AFFINE, AFFINE_DATA[op](v), RESAMPLE[mode], fillcolor=fill)
    return np.asarray(out).reshape(a.shape).astype(np.int64)


def _check(got, ref, mode):
    diff = np.abs(got - ref)
    if mode == "nearest":
        assert diff.max() == 0
    else:
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("h, w, c", [(32, 32, 3), (64, 48, 3), (20, 27, 1)])
def test_each_mode_matches_pillow(mode, h, w, c):
    arr = _images(2, h, w, c, seed=h + w)
    x = _float(arr)
    fill = tuple(f / 255 for f in FILL[:c])
    for op, values in CASES:
        for v in values:
            got = _levels(getattr(P, op)(x, v, fill, interpolation=mode))
            _check(got, np.stack([_pil(a, op, v, mode) for a in arr]), mode)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_affine_with_a_general_matrix_matches_pillow(mode):
    arr = _images(2, 30, 40, seed=5)
    data = (0.9, 0.2, -3.25, -0.15, 1.1, 2.5)  # scale, rotation and shear at once
    got = _levels(pil_ops.affine(_float(arr), torch.tensor(data, dtype=torch.float64).view(1, 2, 3).expand(2, 2, 3), 0.0, mode))
    ref = np.stack([np.asarray(Image.fromarray(a).transform((40, 30), Image.AFFINE, data, RESAMPLE[mode]))
                    for a in arr]).astype(np.int64)
    _check(got, ref, mode)


def test_interpolated_modes_differ_from_nearest_and_each_other():
    # the comparison above would pass for any mode if Pillow ignored resample: make sure it does not
    arr = _images(2, 32, 32, seed=9)
    out = {m: _levels(P.rotate(_float(arr), 13.7, interpolation=m)) for m in RESAMPLE}
    assert (out["nearest"] != out["bilinear"]).mean() > 0.5 and (out["bilinear"] != out["bicubic"]).mean() > 0.3


def test_per_sample_parameters_and_fill_are_kept_exactly():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # off the 8-bit grid
    fill = (0.123, 0.5, 0.987)
    for mode in ("bilinear", "bicubic"):
        got = P.rotate(x, torch.tensor([0.0, 30.0, 45.0]), fill=fill, interpolation=mode)
        assert torch.equal(got[0], x[0])  # no rotation: the sample passes through unchanged
        torch.testing.assert_close(got[2, :, 0, 0], torch.tensor(fill), rtol=0, atol=0)  # a corner maps outside
        assert torch.equal(got[1], P.rotate(x[1:2], 30.0, fill=fill, interpolation=mode)[0])


# ------------------------------------------------------------------------------------------------- random


@pytest.mark.parametrize("gpu_path", [False, True], ids=["cpu-path", "gpu-path"])
def test_random_mode_picks_bilinear_or_bicubic_per_sample_from_the_generator(gpu_path, monkeypatch):
    from longtail import hostsync

    if gpu_path:  # both filters on every sample, selected per sample (no host sync), instead of two groups
        monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)
    b = 12
    arr = _images(b, 16, 16, seed=2)
    x = _float(arr)
    got = P.rotate(x, 17.0, interpolation="random", g=torch.Generator().manual_seed(11))
    bil, bic = P.rotate(x, 17.0, interpolation="bilinear"), P.rotate(x, 17.0, interpolation="bicubic")
    is_bil = [torch.equal(got[i], bil[i]) for i in range(b)]
    is_bic = [torch.equal(got[i], bic[i]) for i in range(b)]
    assert all(p != q for p, q in zip(is_bil, is_bic))  # each sample is exactly one of the two
    expected = (torch.rand(b, generator=torch.Generator().manual_seed(11)) < 0.5).tolist()
    assert is_bic == expected and 0 < sum(expected) < b
    # reproducible from the seed; another seed picks differently
    again = P.rotate(x, 17.0, interpolation="random", g=torch.Generator().manual_seed(11))
    other = P.rotate(x, 17.0, interpolation="random", g=torch.Generator().manual_seed(12))
    assert torch.equal(got, again) and not torch.equal(got, other)


def test_rand_augment_random_mode_matches_a_pillow_loop():
    b = 64
    arr = _images(b, 32, 32, seed=4)
    fill = (0.4, 0.5, 0.6)
    got = P.rand_augment(_float(arr), torch.Generator().manual_seed(8), n=2, m=9, mstd=0.5, fill=fill,
                         interpolation="random")
    g = torch.Generator().manual_seed(8)
    op = torch.randint(0, 15, (b, 2), generator=g)
    u = torch.rand(b, 2, 2, generator=g)
    level = (9 + 0.5 * torch.randn(b, 2, generator=g)).clamp(0, 10)
    cubic = torch.rand(b, 2, generator=g) < 0.5  # drawn after the ops, levels and signs
    names = list(P.RA_OPS)
    pil_fill = tuple(round(f * 255) for f in fill)
    ref, used = [], set()
    for i, a in enumerate(arr):
        im = Image.fromarray(a)
        for k in range(2):
            if u[i, k, 0] >= 0.5:
                continue
            name, lv = names[int(op[i, k])], float(level[i, k]) / 10
            sign = -1 if u[i, k, 1] < 0.5 else 1
            resample = Image.BICUBIC if cubic[i, k] else Image.BILINEAR
            v = {"Rotate": 30 * lv * sign, "ShearX": 0.3 * lv * sign, "ShearY": 0.3 * lv * sign,
                 "TranslateX": 0.45 * 32 * lv * sign, "TranslateY": 0.45 * 32 * lv * sign,
                 "Posterize": int(4 * lv), "Solarize": int(256 * lv),
                 "SolarizeAdd": int(110 * lv)}.get(name, 1.8 * lv + 0.1)
            if name == "Rotate":
                im = im.rotate(float(np.float32(v)), resample=resample, fillcolor=pil_fill)
                used.add(resample)
            elif name in GEOMETRIC:
                im = im.transform(im.size, Image.AFFINE, AFFINE_DATA[GEOMETRIC[name]](float(np.float32(v))), resample,
                                  fillcolor=pil_fill)
                used.add(resample)
            else:
                im = _pil_op(im, name, v, fill=pil_fill)
        ref.append(np.asarray(im))
    assert used == {Image.BILINEAR, Image.BICUBIC}
    _close_to_pil(got, torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).float() / 255)
    # every geometric op with bilinear or bicubic is PIL-exact: the tolerance is the pointwise ops' (see
    # test_augment.py); the nearest pipeline would differ from this reference far more
    nearest = P.rand_augment(_float(arr), torch.Generator().manual_seed(8), n=2, m=9, mstd=0.5, fill=fill)
    assert (nearest - got).abs().mean() > 2 / 255


def test_nearest_draws_are_unchanged_and_random_adds_one_draw():
    x = _float(_images(4, 16, 16))
    g1, g2, g3 = (torch.Generator().manual_seed(5) for _ in range(3))
    P.rand_augment(x, g1, n=2, m=9, mstd=0.5)
    P.ra_draw(g2, 4, 16, 16, "cpu", n=2, m=9, mstd=0.5)
    assert torch.equal(g1.get_state(), g2.get_state())  # nearest (the CIFAR setting) draws what it always drew
    P.rand_augment(x, g3, n=2, m=9, mstd=0.5, interpolation="random")
    torch.rand(4, 2, generator=g2)
    assert torch.equal(g3.get_state(), g2.get_state())


# ------------------------------------------------------------------------------------- launches and presets


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "random"])
def test_number_of_operations_does_not_grow_with_the_batch(mode, monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    from longtail import hostsync

    monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)  # the GPU path: no subsets of the batch

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    def run(b):
        x = torch.rand(b, 3, 12, 12)
        g = torch.Generator().manual_seed(0)
        with Count() as c:
            P.apply_ops(x, P._RA_NAMES, torch.arange(b) % 16 - 1, torch.full((b,), 3.0),
                        interpolation=pil_ops.draw_interpolation(mode, g, b, device="cpu"))
        return c.n

    for b in (2, 16, 48):  # build the cached constants (pixel centres, index patterns, histogram offsets)
        run(b)
    assert run(2) == run(16) == run(48)


def test_the_large_image_recipe_uses_random_resampling_and_relative_translations():
    assert RANDAUGMENT_GEOMETRY["large"] == dict(translate_px=None, interpolation="random")
    assert RANDAUGMENT_GEOMETRY["small"]["interpolation"] == "nearest"
    mean = (0.485, 0.456, 0.406)
    tf = build_torchvision_transform("randaugment", train=True, image_size=32, crop_padding=0, flip=True, cutout=0,
                                     randaugment_mstd=0.5, mean=mean, std=mean, resize=36, center_crop=32)
    assert "interpolation=random" in repr(tf)
    im = Image.fromarray(_images(1, 40, 40)[0])
    torch.manual_seed(3)
    a = tf(im)
    torch.manual_seed(3)
    assert a.shape == (3, 32, 32) and torch.equal(a, tf(im))


# ------------------------------------------------------------------------------------------------ bad values


def test_bad_interpolation_values_raise_one_line_errors_and_leave_the_input():
    x = torch.rand(2, 3, 8, 8)
    keep = x.clone()
    for call, msg in [
        (lambda: P.rotate(x, 10.0, interpolation="linear"),
         "interpolation must be one of nearest, bilinear, bicubic, random (got 'linear')"),
        (lambda: pil_ops.affine(x, torch.eye(2, 3).expand(2, 2, 3), interpolation="cubic"), "got 'cubic'"),
        (lambda: P.rand_augment(x, torch.Generator(), interpolation="BICUBIC"), "got 'BICUBIC'"),
        (lambda: P.shear_x(x, 0.1, interpolation="random"), "interpolation='random' draws bilinear or bicubic"),
        (lambda: P.apply_ops(x, ("Rotate",), torch.zeros(2, dtype=torch.long), torch.ones(2), interpolation="random"),
         "apply_ops needs the per-sample choice"),
        (lambda: P.apply_ops(x, ("Rotate",), torch.zeros(2, dtype=torch.long), torch.ones(2),
                             interpolation=torch.ones(3, dtype=torch.bool)), "bool tensor [2], got (3,)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)) as err:
            call()
        assert "\n" not in str(err.value)
    assert torch.equal(x, keep)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "random"])
def test_cpu_and_gpu_agree(mode):
    x = _float(_images(8, 40, 36, seed=7))
    deg = torch.linspace(-30, 30, 8)
    cpu = P.rotate(x, deg, (0.2, 0.3, 0.4), interpolation=mode, g=torch.Generator().manual_seed(1))
    gpu = P.rotate(x.cuda(), deg.cuda(), (0.2, 0.3, 0.4), interpolation=mode,
                   g=torch.Generator(device="cuda").manual_seed(1))
    if mode == "random":  # the generators differ: compare each sample with both fixed modes instead
        cpu = torch.stack([P.rotate(x[i:i + 1], deg[i:i + 1], (0.2, 0.3, 0.4),
                                    interpolation="bicubic" if c else "bilinear")[0]
                           for i, c in enumerate((torch.rand(8, generator=torch.Generator(device="cuda").manual_seed(1),
                                                             device="cuda") < 0.5).tolist())])
    assert torch.equal(cpu, gpu.cpu())
