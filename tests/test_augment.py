"""Batched augmentations against slow per-sample references (loops, PIL, torchvision)."""

import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageOps

from longtail.data import augment as A
from longtail.data import augment_policies as P
from longtail.data import pil_ops

GREY = 128 / 255


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _images(b=6, c=3, size=32, lo=0, hi=256, seed=0):
    """uint8 NHWC images; a reduced range makes autocontrast and equalize non-trivial."""
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi, (b, size, size, c), dtype=np.uint8)


def _batch(arr):
    return A.to_float(torch.from_numpy(arr))


def _pil_batch(arr, fn):
    """Apply a PIL function image by image; returns float [B, C, H, W]."""
    out = []
    for a in arr:
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out.append(np.asarray(fn(im)).reshape(a.shape))
    return _batch(np.stack(out))


# ------------------------------------------------------------------ to_float / normalize


def test_to_float_accepts_both_layouts():
    arr = _images(b=2, size=5)
    nhwc = torch.from_numpy(arr)
    x = A.to_float(nhwc)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 5, 5)
    torch.testing.assert_close(x, nhwc.permute(0, 3, 1, 2).double().div(255).float())
    torch.testing.assert_close(A.to_float(nhwc.permute(0, 3, 1, 2)), x)
    assert A.to_float(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 4, 4), "uint8"),
    (torch.zeros(3, 4, 4, dtype=torch.uint8), "uint8 tensor"),
    (torch.zeros(2, 5, 4, 4, dtype=torch.uint8), "channel dimension"),
])
def test_to_float_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        A.to_float(bad)


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    y = A.normalize(x, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    for c, (m, s) in enumerate(zip((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))):
        torch.testing.assert_close(y[:, c], (x[:, c] - m) / s)
    with pytest.raises(ValueError, match="fill must have 1 or 3 values"):
        A.normalize(x, (0.1, 0.2), (1.0, 1.0))
    with pytest.raises(ValueError, match="std must be positive"):
        A.normalize(x, 0.5, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="float tensor"):
        A.normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 0.5, 0.5)


def test_generator_on_another_device_is_rejected():
    x = torch.empty(2, 3, 4, 4, device="meta")
    with pytest.raises(ValueError, match="torch.Generator\\(device=x.device\\)"):
        A.random_hflip(x, _gen(0))


# ------------------------------------------------------------------ crop / flip / cutout


@pytest.mark.parametrize("size, pad", [(32, 4), (24, 0), ((20, 28), 2)])
def test_random_crop_matches_loop(size, pad):
    x = _batch(_images(b=5))
    y = A.random_crop(x, _gen(3), size, pad)
    th, tw = (size, size) if isinstance(size, int) else size
    g = _gen(3)
    top = torch.randint(0, 32 + 2 * pad - th + 1, (5,), generator=g)
    left = torch.randint(0, 32 + 2 * pad - tw + 1, (5,), generator=g)
    assert y.shape == (5, 3, th, tw) and y.dtype == torch.float32
    for i in range(5):
        padded = F.pad(x[i], (pad,) * 4)
        torch.testing.assert_close(y[i], padded[:, top[i]:top[i] + th, left[i]:left[i] + tw], rtol=0, atol=0)


def test_random_crop_rejects_too_large():
    with pytest.raises(ValueError, match="cannot crop 40x40 from 32x32 images padded by 2"):
        A.random_crop(torch.rand(2, 3, 32, 32), _gen(0), 40, 2)


def test_random_hflip_matches_loop():
    x = torch.rand(16, 3, 5, 7)
    y = A.random_hflip(x, _gen(1), p=0.5)
    flip = torch.rand(16, generator=_gen(1)) < 0.5
    assert 0 < flip.sum() < 16
    for i in range(16):
        assert torch.equal(y[i], x[i].flip(2) if flip[i] else x[i])
    assert torch.equal(A.random_hflip(x, _gen(1), p=0.0), x)
    with pytest.raises(ValueError, match="probability"):
        A.random_hflip(x, _gen(1), p=1.5)


@pytest.mark.parametrize("size, holes", [(16, 1), (5, 2)])
def test_cutout_matches_loop(size, holes):
    x = torch.rand(8, 3, 12, 10) + 1.0
    y = A.cutout(x, _gen(2), size, holes=holes, value=-3.0)
    g = _gen(2)
    cy = torch.randint(0, 12, (8, holes), generator=g)
    cx = torch.randint(0, 10, (8, holes), generator=g)
    ref = x.clone()
    for i in range(8):
        for j in range(holes):
            y0, x0 = int(cy[i, j]) - size // 2, int(cx[i, j]) - size // 2
            ref[i, :, max(y0, 0):max(y0 + size, 0), max(x0, 0):max(x0 + size, 0)] = -3.0
    assert torch.equal(y, ref)
    with pytest.raises(ValueError, match="size > 0"):
        A.cutout(x, _gen(2), 0)


# ------------------------------------------------------------------ determinism

_RANDOM_OPS = {
    "crop": lambda x, g: A.random_crop(x, g, 32, 4),
    "flip": lambda x, g: A.random_hflip(x, g),
    "cutout": lambda x, g: A.cutout(x, g, 8),
    "resized_crop": lambda x, g: A.random_resized_crop(x, g, 32),
    "color_jitter": lambda x, g: A.color_jitter(x, g, 0.4, 0.4, 0.4, 0.1),
    "grayscale": lambda x, g: A.random_grayscale(x, g, 0.5),
    "blur": lambda x, g: A.gaussian_blur(x, g, p=1.0),
    "autoaugment": lambda x, g: A.auto_augment_cifar(x, g),
    "randaugment": lambda x, g: A.rand_augment(x, g, 2, 9, 0.5),
}


@pytest.mark.parametrize("name", list(_RANDOM_OPS))
def test_same_seed_same_output(name):
    x = _batch(_images(b=8))
    op = _RANDOM_OPS[name]
    assert torch.equal(op(x, _gen(5)), op(x, _gen(5)))
    assert not torch.equal(op(x, _gen(5)), op(x, _gen(6)))


# ------------------------------------------------------------------ AutoAugment op kernels vs PIL

_FILL = (128, 128, 128)
_POINTWISE_CASES = [
    ("invert", lambda x, m: P.invert(x), lambda im, m: ImageOps.invert(im), [0]),
    ("posterize", P.posterize, lambda im, m: ImageOps.posterize(im, m), [1, 3, 5, 8]),
    ("solarize", P.solarize, lambda im, m: ImageOps.solarize(im, m), [0, 100, 198.3, 256]),
    ("solarize_add", P.solarize_add,
     lambda im, m: im.point([min(255, i + m) if i < 128 else i for i in range(256)] * len(im.getbands())), [44, 110]),
    ("autocontrast", lambda x, m: P.autocontrast(x), lambda im, m: ImageOps.autocontrast(im), [0]),
    ("equalize", lambda x, m: P.equalize(x), lambda im, m: ImageOps.equalize(im), [0]),
    ("brightness", P.brightness, lambda im, m: ImageEnhance.Brightness(im).enhance(m), [0.1, 0.7, 1.9]),
    ("color", P.color, lambda im, m: ImageEnhance.Color(im).enhance(m), [0.1, 0.7, 1.9]),
    ("contrast", P.contrast, lambda im, m: ImageEnhance.Contrast(im).enhance(m), [0.1, 0.7, 1.9]),
    ("sharpness", P.sharpness, lambda im, m: ImageEnhance.Sharpness(im).enhance(m), [0.1, 0.7, 1.9]),
]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name, ours, pil, mags", _POINTWISE_CASES, ids=[c[0] for c in _POINTWISE_CASES])
def test_pointwise_ops_match_pil(name, ours, pil, mags, channels):
    arr = np.concatenate([_images(b=3, c=channels, lo=40, hi=190), _images(b=2, c=channels, seed=1)])
    arr[0] = 77  # a constant image: the degenerate branches of autocontrast and equalize
    x = _batch(arr)
    for m in mags:
        got, ref = ours(x, m), _pil_batch(arr, lambda im: pil(im, m))
        assert (got - ref).abs().max() <= 1 / 255 + 1e-6, (name, m)
        assert (got - ref).abs().mean() <= 0.05 / 255, (name, m)  # rounding may differ, rarely


def _pil_affine(data):
    return lambda im, m: im.transform(im.size, Image.AFFINE, data(m), Image.NEAREST, fillcolor=_FILL)


_GEOMETRIC_CASES = [
    ("shear_x", P.shear_x, _pil_affine(lambda m: (1, m, 0, 0, 1, 0))),
    ("shear_y", P.shear_y, _pil_affine(lambda m: (1, 0, 0, m, 1, 0))),
    ("translate_x", P.translate_x, _pil_affine(lambda m: (1, 0, 10 * m, 0, 1, 0))),
    ("translate_y", P.translate_y, _pil_affine(lambda m: (1, 0, 0, 0, 1, 10 * m))),
    ("rotate", P.rotate, lambda im, m: im.rotate(60 * m, fillcolor=_FILL)),
]


@pytest.mark.parametrize("name, ours, pil", _GEOMETRIC_CASES, ids=[c[0] for c in _GEOMETRIC_CASES])
def test_geometric_ops_match_pil(name, ours, pil):
    # Same pixel-centre + floor rule as PIL; only float rounding on exact pixel boundaries may differ.
    arr = _images(b=4)
    x = _batch(arr)
    scale = {"translate_x": 10, "translate_y": 10, "rotate": 60}.get(name, 1)
    for m in (0.27, -0.13, 0.45):
        got, ref = ours(x, m * scale, GREY), _pil_batch(arr, lambda im: pil(im, m))
        assert (got - ref).abs().mean() < 0.5 / 255, (name, m)
        assert ((got - ref).abs() > 1e-6).float().mean() < 0.01, (name, m)
        assert not torch.equal(got, x)


def test_per_sample_parameters_and_fill():
    x = _batch(_images(b=3))
    got = P.rotate(x, torch.tensor([0.0, 90.0, 45.0]), fill=(1.0, 0.0, 0.5))
    assert torch.equal(got[0], x[0])
    torch.testing.assert_close(got[1], x[1].rot90(1, (1, 2)))  # 90 deg counter-clockwise, exact
    assert torch.equal(P.posterize(x, torch.tensor([0.0, 8.0, 1.0]))[:2], torch.stack([torch.zeros_like(x[0]), x[1]]))
    corner = got[2, :, 0, 0]
    torch.testing.assert_close(corner, torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="shape \\[3\\]"):
        P.brightness(x, torch.ones(2))
    with pytest.raises(ValueError, match="fill must have 1 or 3 values"):
        P.rotate(x, 10.0, fill=(0.1, 0.2))


def test_apply_ops_subset_and_mask_paths_agree():
    x = _batch(_images(b=12))
    names = ("Rotate", "Equalize", "Contrast", "Posterize", "Solarize")
    op = torch.tensor([0, 1, 2, 3, 4, -1, 0, 1, 2, 3, 4, 2])
    param = torch.linspace(1.0, 9.0, 12)
    a = P.apply_ops(x, names, op, param, subset=True)
    b = P.apply_ops(x, names, op, param, subset=False)
    assert torch.equal(a, b) and torch.equal(a[5], x[5])
    with pytest.raises(ValueError, match="unknown op"):
        P.apply_ops(x, ("Blur",), op, param)


@pytest.mark.parametrize("gpu_path", [False, True], ids=["cpu-path", "gpu-path"])
@pytest.mark.parametrize("names", [P._AA_NAMES, P._RA_NAMES], ids=["autoaugment", "randaugment"])
@pytest.mark.parametrize("grid", [True, False], ids=["8-bit", "off-grid"])
def test_fused_apply_ops_equals_each_op_on_its_own_samples(names, grid, gpu_path, monkeypatch):
    """The fused chain (the default: on a GPU over the whole batch, on a CPU over the samples with a pointwise
    op) gives every sample exactly what its own op gives it."""
    from longtail import hostsync

    if gpu_path:
        monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)
    b = 6 * len(names)
    arr = _images(b=b, lo=10, hi=240, seed=3)
    x = _batch(arr) if grid else torch.rand(b, 3, 32, 32, generator=_gen(1))
    g = _gen(2)
    op = torch.arange(b) % (len(names) + 1) - 1  # every op (and -1, no op) on several samples
    raw = torch.rand(b, generator=g)
    ranges = {"Posterize": (0, 8), "Solarize": (0, 256), "SolarizeAdd": (0, 110), "Rotate": (-30, 30),
              "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateX": (-14, 14), "TranslateY": (-14, 14)}
    param = torch.empty(b)
    for i in range(b):
        name = names[int(op[i])] if op[i] >= 0 else None
        lo, hi = ranges.get(name, (0.1, 1.9))
        param[i] = lo + (hi - lo) * raw[i]
        if name in ("Posterize", "Solarize", "SolarizeAdd"):
            param[i] = param[i].floor()
    fused = P.apply_ops(x, names, op, param, fill=(0.3, 0.5, 0.7))
    assert torch.equal(fused, P.apply_ops(x, names, op, param, fill=(0.3, 0.5, 0.7), subset=True))
    ops = {"ShearX": P.shear_x, "ShearY": P.shear_y, "TranslateX": P.translate_x, "TranslateY": P.translate_y,
           "Rotate": P.rotate}
    for i in range(b):
        if op[i] < 0:
            assert torch.equal(fused[i], x[i])
            continue
        name = names[int(op[i])]
        xi = x[i:i + 1]
        if name in ops:
            ref = ops[name](xi, float(param[i]), fill=(0.3, 0.5, 0.7))
        else:
            ref = pil_ops._POINTWISE[name](xi, param[i:i + 1])
        assert torch.equal(fused[i:i + 1], ref), name


# ------------------------------------------------------------------ whole policies vs PIL loops


def _pil_op(im, name, v, fill=_FILL):
    affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
              "TranslateX": (1, 0, v, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v)}
    if name in affine:
        return im.transform(im.size, Image.AFFINE, affine[name], Image.NEAREST, fillcolor=fill)
    if name == "Rotate":
        return im.rotate(v, fillcolor=fill)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(im).enhance(v)
    if name == "Posterize":
        return ImageOps.posterize(im, int(v))
    if name == "Solarize":
        return ImageOps.solarize(im, v)
    if name == "SolarizeAdd":
        return im.point([min(255, i + int(v)) if i < 128 else i for i in range(256)] * 3)
    return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[name](im)


def _close_to_pil(got, ref):
    # PIL rounds coordinates in double precision; a pixel on an exact boundary may differ, rarely
    diff = (got - ref).abs()
    assert diff.mean() < 0.5 / 255
    assert (diff > 1.5 / 255).flatten(1).float().mean(1).max() < 0.01  # per image


def test_auto_augment_matches_pil_loop():
    import torchvision.transforms as T

    # the policy table is the published one (torchvision records it without the unused magnitudes)
    tv = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10).policies
    assert [tuple((n, p, m if n not in ("Invert", "AutoContrast", "Equalize") else None) for n, p, m in s)
            for s in P.AA_CIFAR10_POLICY] == [tuple(s) for s in tv]
    b = 400
    arr = _images(b=b, lo=20, hi=230)
    got = A.auto_augment_cifar(_batch(arr), _gen(7))
    g = _gen(7)
    sub = torch.randint(0, 25, (b,), generator=g)
    u = torch.rand(b, 2, 2, generator=g)
    ref, applied = [], set()
    for i, a in enumerate(arr):
        im = Image.fromarray(a)
        for s, (name, p, m) in enumerate(P.AA_CIFAR10_POLICY[int(sub[i])]):
            if u[i, s, 0] >= p:
                continue
            sign = -1 if u[i, s, 1] < 0.5 else 1
            applied.add(name)
            v = {"ShearX": 0.3 * m / 9 * sign, "ShearY": 0.3 * m / 9 * sign, "Rotate": 30 * m / 9 * sign,
                 "TranslateX": 150 / 331 * 32 * m / 9 * sign, "TranslateY": 150 / 331 * 32 * m / 9 * sign,
                 "Posterize": 8 - round(m / 2.25), "Solarize": 255 * (1 - m / 9)}.get(name, 1 + sign * 0.9 * m / 9)
            im = _pil_op(im, name, v)
        ref.append(np.asarray(im))
    assert applied == {n for sub_policy in P.AA_CIFAR10_POLICY for n, _, _ in sub_policy}  # all ops exercised
    _close_to_pil(got, _batch(np.stack(ref)))


@pytest.mark.parametrize("m, mstd, shift", [(9, 0.5, None), (5, 0.0, None), (10, 0.5, 7.0)])
def test_rand_augment_matches_pil_loop(m, mstd, shift):
    b = 96
    arr = _images(b=b, lo=20, hi=230)
    fill = (0.4, 0.5, 0.6)
    got = A.rand_augment(_batch(arr), _gen(8), n=2, m=m, mstd=mstd, fill=fill, translate_px=shift)
    level10 = 0.45 * 32 if shift is None else shift  # translation at level 10: relative or absolute
    g = _gen(8)
    op = torch.randint(0, 15, (b, 2), generator=g)
    u = torch.rand(b, 2, 2, generator=g)
    level = (m + mstd * torch.randn(b, 2, generator=g) if mstd else torch.full((b, 2), float(m))).clamp(0, 10)
    names = list(P.RA_OPS)
    assert len(names) == 15 and "Cutout" not in names
    pil_fill = tuple(round(f * 255) for f in fill)
    ref, applied = [], set()
    for i, a in enumerate(arr):
        im = Image.fromarray(a)
        for k in range(2):
            if u[i, k, 0] >= 0.5:
                continue
            name, lv = names[int(op[i, k])], float(level[i, k]) / 10  # timm's level / 10
            sign = -1 if u[i, k, 1] < 0.5 else 1
            applied.add(name)
            v = {"Rotate": 30 * lv * sign, "ShearX": 0.3 * lv * sign, "ShearY": 0.3 * lv * sign,
                 "TranslateX": level10 * lv * sign, "TranslateY": level10 * lv * sign,
                 "Posterize": int(4 * lv), "Solarize": int(256 * lv),
                 "SolarizeAdd": int(110 * lv)}.get(name, 1.8 * lv + 0.1)
            im = _pil_op(im, name, v, fill=pil_fill)
        ref.append(np.asarray(im))
    assert applied == set(names)
    # fill 0.4 is not on the 8-bit grid: PIL stores 102, we keep 0.4 (= 102/255) until a pointwise op
    _close_to_pil(got, _batch(np.stack(ref)))


def test_rand_augment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n >= 0"):
        A.rand_augment(torch.rand(2, 3, 8, 8), _gen(0), n=-1)
    with pytest.raises(ValueError, match="translate_px must be a finite number of pixels >= 0.*got -1"):
        A.rand_augment(torch.rand(2, 3, 8, 8), _gen(0), translate_px=-1.0)


# ------------------------------------------------------------------ colour ops


def test_color_jitter_zero_is_identity_and_p_zero_too():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(A.color_jitter(x, _gen(0), 0, 0, 0, 0), x)
    assert torch.equal(A.color_jitter(x, _gen(0), 0.4, 0.4, 0.4, 0.1, p=0.0), x)
    with pytest.raises(ValueError, match="hue in \\[0, 0.5\\]"):
        A.color_jitter(x, _gen(0), hue=0.7)


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_matches_torchvision_loop(channels):
    x = torch.rand(12, channels, 9, 7)
    x[0] = 0.5  # grey image: zero saturation, hue undefined
    y = A.color_jitter(x, _gen(4), 1.2, 0.5, 0.6, 0.2, p=0.7)  # brightness > 1: factors from 0
    u = torch.rand(12, 5, generator=_gen(4))
    for i in range(12):
        ref = x[i]
        if u[i, 4] < 0.7:
            ref = TF.adjust_brightness(ref, float(2.2 * u[i, 0]))
            ref = TF.adjust_contrast(ref, float(0.5 + 1.0 * u[i, 1]))
            ref = TF.adjust_saturation(ref, float(0.4 + 1.2 * u[i, 2]))
            ref = TF.adjust_hue(ref, float(0.2 * (2 * u[i, 3] - 1)))
        torch.testing.assert_close(y[i], ref, atol=2e-5, rtol=0)


def test_random_grayscale():
    x = torch.rand(6, 3, 5, 5)
    y = A.random_grayscale(x, _gen(0), p=1.0)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    torch.testing.assert_close(y, TF.rgb_to_grayscale(x, num_output_channels=3))
    assert torch.equal(A.random_grayscale(x, _gen(0), p=0.0), x)
    mixed = A.random_grayscale(x, _gen(0), p=0.5)
    gray = torch.rand(6, generator=_gen(0)) < 0.5
    assert torch.equal(mixed[~gray], x[~gray]) and torch.equal(mixed[gray], y[gray])
    x1 = torch.rand(2, 1, 5, 5)
    assert torch.equal(A.random_grayscale(x1, _gen(0), p=1.0), x1)


def test_gaussian_blur():
    x = torch.rand(5, 3, 16, 16)
    torch.testing.assert_close(A.gaussian_blur(x, _gen(0), sigma=(1e-3, 1e-3), p=1.0), x)
    const = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(A.gaussian_blur(const, _gen(0), p=1.0), const)
    y = A.gaussian_blur(x, _gen(1), sigma=(0.5, 2.0), p=0.6, kernel_size=5)
    u = torch.rand(5, 2, generator=_gen(1))
    for i in range(5):
        s = float(0.5 + 1.5 * u[i, 0])
        ref = TF.gaussian_blur(x[i], [5, 5], [s, s]) if u[i, 1] < 0.6 else x[i]
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        A.gaussian_blur(x, _gen(0), kernel_size=4)


# ------------------------------------------------------------------ random resized crop


def test_random_resized_crop_full_box_is_identity_and_shrinks_smoothly():
    x = torch.rand(4, 3, 12, 12)
    torch.testing.assert_close(A.random_resized_crop(x, _gen(0), 12, scale=(1, 1), ratio=(1, 1)), x)
    # shrinking the whole image by 3 averages 3 x 3 samples per output pixel: a box filter here
    y = A.random_resized_crop(x, _gen(0), 4, scale=(1, 1), ratio=(1, 1))
    torch.testing.assert_close(y, F.avg_pool2d(x, 3))


def _tv_params(u, h, w, scale, ratio):
    """torchvision's get_params, fed with our uniform draws."""
    for t in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * float(u[t, 0]))
        ar = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * float(u[t, 1]))
        cw, ch = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
        if 0 < cw <= w and 0 < ch <= h:
            return int(float(u[t, 2]) * (h - ch + 1)), int(float(u[t, 3]) * (w - cw + 1)), ch, cw
    if w / h < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@pytest.mark.parametrize("scale, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (5.0, 6.0))])
def test_random_resized_crop_matches_torchvision_loop(scale, ratio):
    # enlarging only (crops <= 20 px -> 28 px), where no antialiasing is involved
    x = torch.rand(10, 3, 20, 20)
    y = A.random_resized_crop(x, _gen(9), 28, scale=scale, ratio=ratio)
    u = torch.rand(10, 10, 4, generator=_gen(9))
    for i in range(10):
        top, left, ch, cw = _tv_params(u[i], 20, 20, scale, ratio)
        ref = TF.resized_crop(x[i], top, left, ch, cw, [28, 28], antialias=False)
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", A.PRESETS)
@pytest.mark.parametrize("shape, size, pad", [((4, 32, 32, 3), 32, 4), ((3, 1, 8, 8), 8, 1)])
def test_build_view_presets(preset, shape, size, pad):
    c = shape[-1] if shape[-1] in (1, 3) else shape[1]
    view = A.build_view(preset, image_size=size, crop_padding=pad, flip=True, cutout=0,
                        mean=(0.5,) * c, std=(0.25,) * c)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=_gen(0))
    y = view(x, _gen(1))
    assert y.shape == (shape[0], c, size, size) and y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.min() >= -2.0 - 1e-6 and y.max() <= 2.0 + 1e-6
    assert torch.equal(view(x, _gen(1)), y)


def test_build_view_standard_is_crop_flip_normalize_cutout():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=_gen(0))
    view = A.build_view("standard", image_size=16, crop_padding=2, flip=True, cutout=4, mean=(0.5,) * 3, std=(0.2,) * 3)
    g = _gen(3)
    ref = A.random_hflip(A.random_crop(A.to_float(x), g, 16, 2), g)
    ref = A.cutout(A.normalize(ref, 0.5, 0.2), g, 4)
    assert torch.equal(view(x, _gen(3)), ref)
    aa = A.build_view("autoaugment", image_size=16, crop_padding=2, flip=False, cutout=0,
                      mean=(0.5,) * 3, std=(0.2,) * 3)
    assert "cutout16" in repr(aa) and "hflip" not in repr(aa)


def test_build_view_rejects_unknown_preset():
    with pytest.raises(ValueError, match="unknown augmentation preset 'autoaug'.*none, standard, autoaugment"):
        A.build_view("autoaug", image_size=32, crop_padding=4, flip=True, cutout=0, mean=(0.5,), std=(0.5,))


@pytest.mark.parametrize("preset", A.PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_build_torchvision_transform(preset, train):
    rgb = Image.fromarray(_images(b=1, size=32)[0])
    tf = A.build_torchvision_transform(preset, train=train, image_size=32, crop_padding=4, flip=True, cutout=8,
                                       mean=(0.5,) * 3, std=(0.25,) * 3, center_crop=None if train else 32)
    out = tf(rgb)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    large = A.build_torchvision_transform(preset, train=train, image_size=24, crop_padding=0, flip=False, cutout=0,
                                          mean=(0.5,), std=(0.25,), resize=36, center_crop=24)
    assert large(Image.fromarray(_images(b=1, c=1, size=48)[0, ..., 0])).shape == (1, 24, 24)
    with pytest.raises(ValueError, match="valid presets"):
        A.build_torchvision_transform("sim", train=train, image_size=32, crop_padding=4, flip=True, cutout=0,
                                      mean=(0.5,), std=(0.5,))


def test_presets_match_the_config_choices():
    from longtail.config import AUGMENTS

    assert tuple(A.PRESETS) == tuple(AUGMENTS)


# ------------------------------------------------------------------ contrastive presets (METHODS §2.4)

_KW = dict(crop_padding=4, flip=True, cutout=0, randaugment_n=2, randaugment_m=10)


@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("preset", ["randaugment", "simclr_rand"])
def test_build_view_rand_presets_are_the_documented_composition(preset, c):
    x = torch.randint(0, 256, (5, 16, 16, c), dtype=torch.uint8, generator=_gen(0))
    mean, std = (0.4,) * c, (0.2,) * c
    view = A.build_view(preset, image_size=16, randaugment_mstd=0.5, mean=mean, std=std, **_KW)
    g = _gen(11)
    ref = A.to_float(x)
    if preset == "randaugment":
        ref = A.random_hflip(A.random_crop(ref, g, 16, 4), g)
    else:  # the simclr steps in order, then RandAugment
        ref = A.random_hflip(A.random_resized_crop(ref, g, 16, scale=(0.2, 1.0)), g)
        ref = A.color_jitter(ref, g, 0.4, 0.4, 0.4, 0.1, p=0.8)
        ref = A.gaussian_blur(A.random_grayscale(ref, g, p=0.2), g, sigma=(0.1, 2.0), p=0.5)
    ref = A.normalize(A.rand_augment(ref, g, n=2, m=10, mstd=0.5, fill=mean), mean, std)
    assert torch.equal(view(x, _gen(11)), ref)
    assert "mstd0.5" in repr(view)


@pytest.mark.parametrize("shape", [(6, 32, 32, 3), (6, 1, 8, 8)])
def test_simclr_rand_extends_simclr(shape):
    c = 3 if shape[-1] == 3 else 1
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=_gen(0))
    size = shape[1] if c == 3 else shape[-1]
    kw = dict(_KW, image_size=size, mean=(0.5,) * c, std=(0.25,) * c)
    sim, rand = A.build_view("simclr", **kw), A.build_view("simclr_rand", **kw)
    a, b = sim(x, _gen(2)), rand(x, _gen(2))
    assert a.shape == b.shape == (6, c, size, size) and torch.isfinite(b).all()
    assert not torch.equal(a, b)
    assert torch.equal(rand(x, _gen(2)), b) and not torch.equal(rand(x, _gen(3)), b)
    # with zero RandAugment ops the rand view is the sim view: sim is an unchanged prefix
    assert torch.equal(A.build_view("simclr_rand", **dict(kw, randaugment_n=0))(x, _gen(2)), a)


def test_build_view_rejects_bad_randaugment_settings():
    kw = dict(_KW, image_size=8, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="randaugment_mstd >= 0, got 2, 10, -0.5"):
        A.build_view("simclr_rand", **dict(kw, randaugment_mstd=-0.5))
    with pytest.raises(ValueError, match="randaugment_m in \\[0, 10\\]"):
        A.build_view("randaugment", **dict(kw, randaugment_m=11))
    with pytest.raises(ValueError, match="randaugment_mstd >= 0"):
        A.build_torchvision_transform("randaugment", train=True, randaugment_mstd=-1.0, **kw)


def _large(preset, train=True, mstd=0.5, c=3):
    return A.build_torchvision_transform(preset, train=train, image_size=224, crop_padding=0, flip=True, cutout=0,
                                         randaugment_mstd=mstd, mean=(0.485, 0.456, 0.406)[:c],
                                         std=(0.229, 0.224, 0.225)[:c], resize=256, center_crop=224)


def _flat(compose):
    """The transforms of a Compose, with RandomApply's contents listed after it."""
    out = []
    for t in compose.transforms:
        out += [t] + (list(t.transforms) if type(t).__name__ == "RandomApply" else [])
    return out


@pytest.mark.parametrize("preset", A.PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_large_image_presets_give_224_crops(preset, train):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (260, 300, 3), dtype=np.uint8))
    tf = _large(preset, train)
    torch.manual_seed(0)
    out = tf(im)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.manual_seed(0)
    assert torch.equal(tf(im), out)  # the global generator (seeded per DataLoader worker) drives it


def test_large_image_views_follow_methods():
    import torchvision.transforms as T

    mean = (0.485, 0.456, 0.406)

    def kinds(compose):
        return [type(t).__name__ for t in _flat(compose)]

    def ra_steps(compose):
        return [t.fn for t in compose.transforms if getattr(t, "fn", None) is not None
                and getattr(t.fn, "func", None) is P.rand_augment]

    sim, rand, v0 = _large("simclr"), _large("simclr_rand"), _large("randaugment")
    for tf in (sim, rand, v0):
        crop = tf.transforms[0]
        assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224) and crop.scale == (0.08, 1.0)
        assert "GaussianBlur" not in kinds(tf) and isinstance(tf.transforms[1], T.RandomHorizontalFlip)
    # sim: jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, no RandAugment
    apply, jitter = sim.transforms[2], sim.transforms[2].transforms[0]
    assert isinstance(apply, T.RandomApply) and apply.p == 0.8
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    assert isinstance(sim.transforms[3], T.RandomGrayscale) and sim.transforms[3].p == 0.2
    assert not ra_steps(sim)
    # rand: the sim view, then RandAugment
    assert kinds(rand)[:6] == kinds(sim)[:6] and len(ra_steps(rand)) == 1
    # v0: jitter with hue 0 always (not in a RandomApply), then RandAugment n2 m10 mstd0.5, translations up to
    # 0.45 of the side, bilinear or bicubic drawn per op (BCL's timm settings), mean fill
    assert kinds(v0)[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"]
    jitter = v0.transforms[2]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4) and jitter.hue is None
    for tf in (rand, v0):
        (ra,) = ra_steps(tf)
        assert ra.keywords == dict(n=2, m=10, mstd=0.5, fill=mean, translate_px=None, interpolation="random")
    assert ra_steps(_large("randaugment", mstd=0.0))[0].keywords["mstd"] == 0.0  # the caller's choice
    # the small-image path keeps the CIFAR views: scale 0.2-1 and a blur for sim, relative translations
    small = A.build_torchvision_transform("simclr_rand", train=True, image_size=32, mean=mean, std=mean,
                                          randaugment_mstd=0.5, **dict(_KW, cutout=8))
    assert small.transforms[0].scale == (0.2, 1.0) and "GaussianBlur" in kinds(small)
    assert ra_steps(small)[0].keywords["translate_px"] is None and "Cutout" not in repr(small)
    assert ra_steps(small)[0].keywords["interpolation"] == "nearest"


def test_stacked_draws_are_each_copys_share_of_a_draw_for_k_global_batches():
    from longtail.data.draws import stacked

    g = torch.Generator().manual_seed(3)
    whole = rand(g, 10, 2)  # 2 copies of a 5-row global batch
    g.manual_seed(3)
    with stacked(2):
        assert torch.equal(rand(g, 10, 2), whole)  # one process: a plain draw for the stacked rows
    g.manual_seed(3)
    with A.batch_rows(1, 5), stacked(2):
        part = rand(g, 6, 2)  # rows 1..3 of each copy
    assert torch.equal(part, torch.cat([whole[1:4], whole[6:9]]))
    with pytest.raises(ValueError, match="not 2 copies"), stacked(2):
        rand(g, 5)
    with pytest.raises(ValueError, match="copies >= 1"), stacked(0):
        pass


def rand(g, *shape):
    return A.rand(g, *shape, device="cpu")


def test_batch_rows_draws_for_the_global_batch_and_keeps_the_share():
    from longtail.data.augment import batch_rows, rand, randint, randn

    g = torch.Generator().manual_seed(3)
    whole = (rand(g, 5, 2, device="cpu"), randint(0, 9, g, 5, device="cpu"), randn(g, 5, 3, device="cpu"))
    g.manual_seed(3)
    with batch_rows(2, 5):
        part = (rand(g, 3, 2, device="cpu"), randint(0, 9, g, 3, device="cpu"), randn(g, 3, 3, device="cpu"))
    for w, p in zip(whole, part):
        assert torch.equal(p, w[2:5])
    g.manual_seed(3)
    assert torch.equal(rand(g, 5, 2, device="cpu"), whole[0])  # the context is gone after the block
    with pytest.raises(ValueError, match="does not fit at offset 4 of a 5-row"):
        with batch_rows(4, 5):
            rand(g, 2, device="cpu")
    for bad in [(-1, 4), (4, 4), (0.5, 4)]:
        with pytest.raises(ValueError, match="0 <= offset < total"):
            with batch_rows(*bad):
                pass


# ------------------------------------------------------------------ the policies' draws keep their distribution


def _chi2_pvalue(observed: dict, expected: dict, n: int) -> float:
    """Pearson's chi-square test of observed counts against expected probabilities over the same outcomes."""
    from scipy.stats import chi2

    assert set(observed) <= set(expected), sorted(set(observed) - set(expected))[:5]
    keys = [k for k in expected if expected[k] > 0]
    stat = sum((observed.get(k, 0) - n * expected[k]) ** 2 / (n * expected[k]) for k in keys)
    return float(chi2.sf(stat, len(keys) - 1))


def _aa_expected_outcomes(h: int, w: int) -> dict:
    """P(stage-1 (op, value), stage-2 (op, value)) of AutoAugment's CIFAR-10 policy, from the published
    table and torchvision's magnitude bins, written out independently of the implementation."""
    def stage(name, p, m):
        signed = name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Contrast",
                          "Brightness", "Sharpness")
        mag = {"ShearX": 0.3 * m / 9, "ShearY": 0.3 * m / 9, "Rotate": 30 * m / 9,
               "TranslateX": 150 / 331 * m / 9 * w, "TranslateY": 150 / 331 * m / 9 * h}.get(name)
        if name in ("Color", "Contrast", "Brightness", "Sharpness"):
            vals = [1 + 0.9 * m / 9, 1 - 0.9 * m / 9]
        elif mag is not None:
            vals = [mag, -mag]
        else:
            vals = [{"Posterize": 8 - round(4 * m / 9), "Solarize": 255 * (1 - m / 9)}.get(name, 0.0)]
        k = P._AA_NAMES.index(name)
        out = [((k, round(v, 3)), p / len(vals)) for v in (vals if signed else vals[:1])]
        return out + [((-1, None), 1 - p)]

    expected = collections.Counter()
    for first, second in P.AA_CIFAR10_POLICY:
        for o1, p1 in stage(*first):
            for o2, p2 in stage(*second):
                expected[o1 + o2] += p1 * p2 / 25
    return expected


def test_autoaugment_draws_follow_the_published_policy():
    """Per sample: a uniform sub-policy, each stage applied with its probability, a fair sign, the bin's
    magnitude; the joint law of both stages' (op, magnitude) matches the policy (chi-square)."""
    n, h, w = 60000, 32, 32
    op, param = P.aa_draw(_gen(11), n, h, w, "cpu")
    observed = collections.Counter()
    for (a, b), (u, v) in zip(op.tolist(), param.tolist()):
        observed[(a, round(u, 3) if a >= 0 else None, b, round(v, 3) if b >= 0 else None)] += 1
    expected = _aa_expected_outcomes(h, w)
    assert _chi2_pvalue(observed, expected, n) > 1e-4


@pytest.mark.parametrize("translate_px", [None, 7.0])
def test_randaugment_draws_follow_timm(translate_px):
    """Each stage: a uniform op of the 15, applied with p = 0.5, a fair sign where the op has one, and the
    level's magnitude (m = 9, mstd = 0: discrete); the two stages are independent (chi-square on the joint)."""
    n, m, h, w = 60000, 9, 32, 24
    op, param = P.ra_draw(_gen(12), n, h, w, "cpu", n=2, m=m, mstd=0.0, p=0.5, translate_px=translate_px)
    lv = m / 10
    shift = 0.45 * lv if translate_px is None else translate_px * lv

    def values(name):
        v = {"Rotate": 30 * lv, "ShearX": 0.3 * lv, "ShearY": 0.3 * lv,
             "TranslateX": shift * (w if translate_px is None else 1), "TranslateY": shift * (h if translate_px is None else 1),
             "Posterize": math.floor(4 * lv), "Solarize": math.floor(256 * lv), "SolarizeAdd": math.floor(110 * lv)}
        if name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
            return [v[name], -v[name]]
        if name in ("Color", "Contrast", "Brightness", "Sharpness"):
            return [1.8 * lv + 0.1]
        return [v.get(name, 0.0)]

    stage = collections.Counter({(-1, None): 0.5})
    for k, name in enumerate(P.RA_OPS):
        vals = values(name)
        for v in vals:
            stage[(k, round(v, 3))] += 0.5 / 15 / len(vals)
    expected = {a + b: pa * pb for a, pa in stage.items() for b, pb in stage.items()}
    observed = collections.Counter()
    for (a, b), (u, v) in zip(op.tolist(), param.tolist()):
        observed[(a, round(u, 3) if a >= 0 else None, b, round(v, 3) if b >= 0 else None)] += 1
    assert _chi2_pvalue(observed, expected, n) > 1e-4


def test_randaugment_level_noise_is_a_clipped_normal():
    from scipy.stats import kstest, norm

    n, m, mstd = 60000, 9.0, 0.5
    op, param = P.ra_draw(_gen(13), n, 32, 32, "cpu", n=2, m=m, mstd=mstd, p=1.0)
    level = param[op == list(P.RA_OPS).index("Rotate")].abs() / 3.0  # |rotate| = 30 * level / 10
    assert abs(float((level >= 10 - 1e-4).float().mean()) - norm.sf(10, m, mstd)) < 0.01  # the clip at 10
    inside = level[level < 10 - 1e-4].double().numpy()
    cdf = lambda x: norm.cdf(x, m, mstd) / norm.cdf(10, m, mstd)  # noqa: E731 - truncated at 10
    assert kstest(inside, cdf).pvalue > 1e-4
