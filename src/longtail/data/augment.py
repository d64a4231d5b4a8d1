"""Batched per-sample augmentations for datasets that live on the training device.

A small dataset is one uint8 tensor on the device; each batch is augmented with tensor ops over the
whole batch, a different random draw per sample, and no Python loop over images, no PIL and no
workers (docs/architecture.md, "The speed design"). The same code runs on CPU and CUDA. Every random op
takes a ``torch.Generator`` ``g`` on the batch's device and draws all of its randomness from it, in
the order its docstring states, so a result is reproducible from the generator state. The draws go
through :func:`rand` / :func:`randint` / :func:`randn` (:mod:`longtail.data.draws`), which inside
:func:`batch_rows` draw for a whole global batch and keep one DDP rank's rows, so augmentation does not
depend on the number of processes. Constants (fill colours, normalisation statistics) are built once per
device (:func:`longtail.hostsync.constant`): nothing is copied from the host on a training step.

The training views (presets) that compose these ops live in :mod:`longtail.data.views`; AutoAugment
and RandAugment in :mod:`longtail.data.augment_policies`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail import hostsync
from longtail.data.augment_policies import auto_augment_cifar, rand_augment
from longtail.data.draws import batch_rows, rand, randint, randn, stacked
from longtail.data.pil_ops import check_batch, fill_tensor

__all__ = [
    "to_float", "normalize", "random_crop", "random_hflip", "cutout", "random_resized_crop",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter",
    "random_grayscale", "gaussian_blur", "auto_augment_cifar", "rand_augment", "batch_rows", "stacked", "rand",
    "randint", "randn",
]

Size = Union[int, Sequence[int]]
Step = Callable[[Tensor, torch.Generator], Tensor]
# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
_LUMA = (0.2989, 0.587, 0.114)


def _pair(size: Size, what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(int(s) != s or s <= 0 for s in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_p(p: float, what: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {p}")


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 [B, C, H, W] in [0, 1].

    The layout is inferred: a last dimension of 1 or 3 means [B, H, W, C] (how ``ArraySplit``
    stores images), otherwise a second dimension of 1 or 3 means [B, C, H, W].

    Shape:
        x: uint8 [B, H, W, C] or [B, C, H, W] with C in (1, 3); returns float32 [B, C, H, W].
    """
    if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"to_float expects a uint8 tensor [B, H, W, C] or [B, C, H, W], got {got}")
    if x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise ValueError(f"cannot find a channel dimension of size 1 or 3 in shape {tuple(x.shape)}")
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def normalize(x: Tensor, mean: Sequence[float] | float, std: Sequence[float] | float) -> Tensor:
    """(x - mean) / std per channel; mean and std have 1 or C values. Shape: [B, C, H, W] -> same."""
    check_batch(x)
    # checked on the host values: a check of the device tensor would sync the GPU on every call
    if isinstance(std, Tensor):
        std = std.detach().cpu().tolist()
    if any(v <= 0 for v in ([std] if isinstance(std, (int, float)) else list(std))):
        raise ValueError(f"std must be positive, got {std}")
    m, s = fill_tensor(mean, x), fill_tensor(std, x)
    return (x - m) / s


def _crop_at(x: Tensor, top: Tensor, left: Tensor, size: tuple[int, int], padding: int, fill: float) -> Tensor:
    """Per-sample windows of the padded batch, as one gather; top/left index the padded image."""
    b, c, h, w = x.shape
    if padding:
        x = F.pad(x, (padding,) * 4, value=fill)
        h, w = h + 2 * padding, w + 2 * padding
    # flat index of window pixel (i, j): (top + i) * w + left + j
    th, tw = size
    offsets = hostsync.cached(("crop_offsets", th, tw, w), x.device,
                              lambda d: (torch.arange(th, device=d)[:, None] * w + torch.arange(tw, device=d)).flatten())
    index = (top * w + left).view(b, 1, 1) + offsets.view(1, 1, -1)
    return x.reshape(b, c, h * w).gather(2, index.expand(b, c, -1)).view(b, c, *size)


def random_crop(x: Tensor, g: torch.Generator, size: Size, padding: int, fill: float = 0.0) -> Tensor:
    """Pad by ``padding`` with ``fill``, then crop a random ``size`` window per sample.

    Random draws from ``g``: ``randint(H + 2p - h + 1, [B])`` (top), then
    ``randint(W + 2p - w + 1, [B])`` (left), both in padded coordinates.

    Shape:
        x: [B, C, H, W]; returns [B, C, h, w].
    """
    check_batch(x, g)
    th, tw = _pair(size, "size")
    b, _, h, w = x.shape
    if padding < 0 or th > h + 2 * padding or tw > w + 2 * padding:
        raise ValueError(f"cannot crop {th}x{tw} from {h}x{w} images padded by {padding}; lower size or raise padding")
    top = randint(0, h + 2 * padding - th + 1, g, b, device=x.device)
    left = randint(0, w + 2 * padding - tw + 1, g, b, device=x.device)
    return _crop_at(x, top, left, (th, tw), padding, fill)


def random_hflip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability ``p`` (draw: ``rand([B]) < p``). Shape: same as x."""
    check_batch(x, g)
    _check_p(p)
    flip = rand(g, x.shape[0], device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: Tensor, g: torch.Generator, size: int, holes: int = 1, value: float = 0.0) -> Tensor:
    """Cutout (DeVries & Taylor 2017): set ``holes`` squares of side ``size`` to ``value``.

    Each centre is uniform over the pixels; the square ``[c - size // 2, c - size // 2 + size)`` is
    clipped at the borders. Value-agnostic: the presets apply it after ``normalize`` with value 0,
    i.e. the dataset mean, as in the original. Draws: ``randint(H, [B, holes])`` (rows), then
    ``randint(W, [B, holes])`` (columns).

    Shape:
        x: [B, C, H, W]; returns the same shape.
    """
    check_batch(x, g)
    if size <= 0 or holes <= 0:
        raise ValueError(f"cutout needs size > 0 and holes > 0, got size={size}, holes={holes}")
    b, _, h, w = x.shape
    cy = randint(0, h, g, b, holes, device=x.device)
    cx = randint(0, w, g, b, holes, device=x.device)

    def span(centre: Tensor, n: int) -> Tensor:  # [B, holes, n]: which rows/cols each hole covers
        d = hostsync.constant(range(n), torch.int64, x.device) - (centre - size // 2)[..., None]
        return d.clamp(0, size - 1) == d

    mask = span(cy, h)[..., :, None] & span(cx, w)[..., None, :]
    mask = mask[:, 0] if holes == 1 else mask.any(1)
    return x.masked_fill(mask[:, None], value)


_cutout = cutout  # build_view's `cutout` argument shadows the function


def _sample_positions(n: int, s: int, x: Tensor) -> Tensor:
    """(i + 0.5) / s for i < n, in x's dtype, built once per device."""
    return hostsync.cached(("sample_positions", n, s, x.dtype), x.device,
                           lambda d: (torch.arange(n, dtype=x.dtype, device=d) + 0.5) / s)


def random_resized_crop(x: Tensor, g: torch.Generator, size: Size, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """torchvision's RandomResizedCrop, per sample, with one batched bilinear ``grid_sample``.

    Ten (area, log-aspect) tries are drawn at once and the first that fits is used; if none fits,
    torchvision's centre-crop fallback. Sampling clamps to the crop's pixel centres, which equals
    torchvision's crop-then-resize (bilinear, ``align_corners=False``) when enlarging. When
    shrinking, each output pixel averages s x s bilinear samples, s = ceil(input / output side), an
    area-like antialias that differs slightly from torchvision's. Draws: ``rand([B, 10, 4])``
    (area, aspect, top, left).

    Shape:
        x: [B, C, H, W]; returns [B, C, h, w].
    """
    check_batch(x, g)
    oh, ow = _pair(size, "size")
    if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
    b, _, h, w = x.shape
    u = rand(g, b, 10, 4, device=x.device)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * u[..., 1])
    cw, ch = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first fitting try
    # (ch, cw, top, left) of the first fitting try, in one gather
    tries = torch.stack([ch, cw, u[..., 2], u[..., 3]], -1)  # [B, 10, 4]
    ch, cw, ut, ul = tries.gather(1, first[..., None].expand(b, 1, 4)).view(b, 4).unbind(1)
    top, left = (ut * (h - ch + 1)).floor(), (ul * (w - cw + 1)).floor()
    # fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    fw, fh = w, h
    if w / h < ratio[0]:
        fh = round(w / ratio[0])
    elif w / h > ratio[1]:
        fw = round(h * ratio[1])
    found = fits.any(1, keepdim=True)
    fallback = hostsync.constant(((h - fh) // 2, (w - fw) // 2, fh, fw), x.dtype, x.device).view(1, 4)
    box = torch.where(found, torch.stack([top, left, ch, cw], 1), fallback)  # [B, 4]
    # pixel-centre coordinates of s samples per output pixel, clamped to the crop, in grid_sample's
    # normalised units: rows and columns in one pass when the output is square
    s = max(math.ceil(h / oh), math.ceil(w / ow))
    start, extent = box[:, :2], box[:, 2:]  # [B, 2]: (top, left), (height, width)
    if oh == ow:
        t = _sample_positions(oh * s, s, x)
        pos = start[..., None] + t * (extent / oh)[..., None] - 0.5  # [B, 2, n]
        pos = torch.maximum(torch.minimum(pos, (start + extent - 1.0)[..., None]), start[..., None])
        size_in = hostsync.constant((h, w), x.dtype, x.device).view(1, 2, 1)
        gy, gx = ((2.0 * pos + 1.0) / size_in - 1.0).unbind(1)
    else:
        def coords(st: Tensor, ext: Tensor, n_out: int, n_in: int) -> Tensor:
            t = _sample_positions(n_out * s, s, x)
            pos = st[:, None] + t * (ext / n_out)[:, None] - 0.5
            pos = torch.maximum(torch.minimum(pos, (st + ext - 1.0)[:, None]), st[:, None])
            return (2.0 * pos + 1.0) / n_in - 1.0

        gy, gx = coords(start[:, 0], extent[:, 0], oh, h), coords(start[:, 1], extent[:, 1], ow, w)
    grid = torch.stack([gx[:, None, :].expand(-1, oh * s, -1), gy[:, :, None].expand(-1, -1, ow * s)], -1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(out, s) if s > 1 else out


def _gray(x: Tensor) -> Tensor:
    """torchvision's rgb_to_grayscale on [B, 3, H, W] (identity for C = 1); returns [B, 1, H, W]."""
    if x.shape[1] == 1:
        return x
    return (x * hostsync.constant(_LUMA, x.dtype, x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _mix(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1.0 - f) * b).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's adjust_brightness with one factor per sample. Shape: x [B, C, H, W], factor [B].

    A blend with black, f x + (1 - f) 0, is f x exactly (adding a signed zero changes nothing)."""
    return (factor.view(-1, 1, 1, 1) * x).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's adjust_contrast (blend with the mean grey level) per sample. Shape: as above."""
    return _mix(x, _gray(x).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's adjust_saturation per sample; identity for C = 1. Shape: as above."""
    return x if x.shape[1] == 1 else _mix(x, _gray(x), factor)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's adjust_hue per sample (hue shift in turns, |factor| <= 0.5); identity for C = 1.

    Shape: x [B, C, H, W], factor [B].
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    v, vmin = x.amax(1), x.amin(1)
    delta = v - vmin
    zero, one = hostsync.constant(0.0, x.dtype, x.device), hostsync.constant(1.0, x.dtype, x.device)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), zero)
    coloured = delta > 0
    d = torch.where(coloured, delta, one)
    hue = torch.where(v == r, (g - b) / d, torch.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    hue = torch.where(coloured, (hue / 6.0) % 1.0, zero)
    hue = (hue + factor.view(-1, 1, 1)) % 1.0
    # HSV -> RGB: channel n in (R, G, B) = (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    n = hostsync.constant((5.0, 3.0, 1.0), x.dtype, x.device).view(1, 3, 1, 1)
    k = (n + 6.0 * hue[:, None]) % 6.0
    return v[:, None] - (v * s)[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def color_jitter(x: Tensor, g: torch.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0, p: float = 1.0) -> Tensor:
    """torchvision's ColorJitter per sample, applied with probability ``p``.

    Factors are uniform in ``[max(0, 1 - v), 1 + v]`` (hue: ``[-hue, hue]``); a zero strength skips
    that op. The order is fixed to brightness, contrast, saturation, hue (torchvision shuffles it
    per image; a per-sample order would cost four times the work). Draws: ``rand([B, 5])``
    (four factors, then the apply test), whatever strengths are zero.

    Shape:
        x: [B, C, H, W] in [0, 1]; returns the same shape.
    """
    check_batch(x, g)
    _check_p(p)
    if min(brightness, contrast, saturation) < 0 or not 0.0 <= hue <= 0.5:
        raise ValueError(f"color_jitter needs brightness, contrast, saturation >= 0 and hue in [0, 0.5], "
                         f"got {brightness}, {contrast}, {saturation}, {hue}")
    u = rand(g, x.shape[0], 5, device=x.device)
    y = x
    for i, (v, fn) in enumerate(((brightness, adjust_brightness), (contrast, adjust_contrast),
                                 (saturation, adjust_saturation))):
        if v > 0:
            lo = max(0.0, 1.0 - v)
            y = fn(y, lo + (1.0 + v - lo) * u[:, i])
    if hue > 0:
        y = adjust_hue(y, hue * (2.0 * u[:, 3] - 1.0))
    return torch.where((u[:, 4] < p)[:, None, None, None], y, x)


def random_grayscale(x: Tensor, g: torch.Generator, p: float = 0.1) -> Tensor:
    """Replace each sample by its luma (torchvision's weights) in all channels with probability ``p``.

    A one-channel batch is returned unchanged (after the draw ``rand([B])``). Shape: same as x.
    """
    check_batch(x, g)
    _check_p(p)
    gray = rand(g, x.shape[0], device=x.device) < p
    if x.shape[1] == 1:
        return x
    return torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)


def gaussian_blur(x: Tensor, g: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5,
                  kernel_size: int | None = None) -> Tensor:
    """Gaussian blur with a per-sample sigma ~ U(sigma), applied with probability ``p``.

    ``kernel_size`` defaults to 10% of the smaller image side, made odd and at least 3 (SimCLR's
    rule). Borders are reflected, like torchvision. The separable kernel runs as two grouped
    convolutions with one group per (sample, channel). Draws: ``rand([B, 2])`` (sigma, apply).

    Shape:
        x: [B, C, H, W]; returns the same shape.
    """
    check_batch(x, g)
    _check_p(p)
    b, c, h, w = x.shape
    k = kernel_size if kernel_size is not None else max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    if k <= 0 or k % 2 == 0 or k // 2 >= min(h, w):
        raise ValueError(f"kernel_size must be odd, positive and smaller than twice the image side, got {k}")
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must satisfy 0 < sigma[0] <= sigma[1], got {sigma}")
    u = rand(g, b, 2, device=x.device)
    s = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-0.5 * (r / s[:, None]) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kern.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, kern.view(b * c, 1, k, 1), groups=b * c).view(b, c, h, w)
    return torch.where((u[:, 1] < p)[:, None, None, None], y, x)


def __getattr__(name: str):
    # the view presets live in longtail.data.views (which imports this module's ops)
    if name in ("PRESETS", "ViewPipeline", "build_view", "build_torchvision_transform"):
        from longtail.data import views

        return getattr(views, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
