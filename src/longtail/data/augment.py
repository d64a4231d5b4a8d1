"""Batched per-sample augmentations for datasets that live on the training device.

A small dataset is one uint8 tensor on the device; each batch is augmented with tensor ops over the
whole batch, a different random draw per sample, and no Python loop over images, no PIL and no
workers (ARCHITECTURE.md, "The speed design"). The same code runs on CPU and CUDA. Every random op
takes a ``torch.Generator`` ``g`` on the batch's device and draws all of its randomness from it, in
the order its docstring states, so a result is reproducible from the generator state. The draws go
through :func:`rand` / :func:`randint` / :func:`randn` (:mod:`longtail.data.draws`), which inside
:func:`batch_rows` draw for a whole global batch and keep one DDP rank's rows, so augmentation does not
depend on the number of processes. Constants (fill colours, normalisation statistics) are built once per
device (:func:`longtail.hostsync.constant`): nothing is copied from the host on a training step.

``build_view(preset, ...)`` composes the ops into the training views of METHODS.md §2.4;
``build_torchvision_transform`` builds the per-image PIL equivalent for the DataLoader path.
AutoAugment and RandAugment live in :mod:`longtail.data.augment_policies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail import hostsync
from longtail.data.augment_policies import auto_augment_cifar, rand_augment
from longtail.data.draws import batch_rows, rand, randint, randn, stacked
from longtail.data.pil_ops import check_batch, fill_tensor

__all__ = [
    "PRESETS", "to_float", "normalize", "random_crop", "random_hflip", "cutout", "random_resized_crop",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter",
    "random_grayscale", "gaussian_blur", "auto_augment_cifar", "rand_augment", "batch_rows", "stacked", "rand",
    "randint", "randn", "ViewPipeline",
    "build_view", "build_torchvision_transform",
]

PRESETS = ("none", "standard", "autoaugment", "randaugment", "simclr", "simclr_rand")
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
    return ValueError(f"unknown augmentation preset '{preset}'; valid presets: {', '.join(PRESETS)}")


def _check_ra(n: int, m: float, mstd: float) -> None:
    if n < 0 or not 0 <= m <= 10 or not mstd >= 0:
        raise ValueError(f"RandAugment needs randaugment_n >= 0, randaugment_m in [0, 10] and randaugment_mstd >= 0, "
                         f"got {n}, {m}, {mstd}")


def _ra_name(n: int, m: float, mstd: float) -> str:
    return f"randaugment_n{n}_m{m}" + (f"_mstd{mstd}" if mstd else "")


def build_view(preset: str, *, image_size: int, crop_padding: int, flip: bool, cutout: int,
               randaugment_n: int = 2, randaugment_m: int = 10, randaugment_mstd: float = 0.0,
               mean: Sequence[float], std: Sequence[float]) -> ViewPipeline:
    """The batched training view for ``preset`` (one of :data:`PRESETS`).

    * ``none``: to_float, normalize.
    * ``standard``: random crop (``crop_padding``), flip, normalize, cutout if ``cutout > 0``.
    * ``autoaugment``: crop, flip, AutoAugment CIFAR-10 (grey fill), normalize, cutout
      (``cutout`` px, 16 when 0).
    * ``randaugment``: crop, flip, RandAugment(n, m, mstd; fill = ``mean``), normalize, cutout if > 0.
    * ``simclr`` (BCL's CIFAR "sim" view, METHODS §2.4): random resized crop (scale 0.2-1), flip,
      colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (sigma 0.1-2,
      p 0.5), normalize.
    * ``simclr_rand`` (the "rand" view = sim + RandAugment): the ``simclr`` steps up to the blur,
      then RandAugment(n, m, mstd; fill = ``mean``), normalize. RandAugment comes last so that the
      sim view is an unchanged prefix (same draws from ``g``), as in BCL's ImageNet "rand" stack,
      where RandAugment follows jitter and grayscale; putting it after the blur also keeps its
      8-bit ops (posterize, solarize, equalize) from being smoothed away.

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
    sim = preset in ("simclr", "simclr_rand")
    steps: list[tuple[str, Step]] = []
    if preset in ("standard", "autoaugment", "randaugment"):
        steps.append((f"crop{image_size}+pad{crop_padding}",
                      partial(random_crop, size=image_size, padding=crop_padding)))
    if sim:
        steps.append((f"resized_crop{image_size}", partial(random_resized_crop, size=image_size, scale=(0.2, 1.0))))
    if flip and preset != "none":
        steps.append(("hflip", random_hflip))
    if preset == "autoaugment":
        steps.append(("autoaugment_cifar10", auto_augment_cifar))
    if sim:
        steps += [("color_jitter", partial(color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)),
                  ("grayscale", partial(random_grayscale, p=0.2)), ("gaussian_blur", partial(gaussian_blur, p=0.5))]
    if preset in ("randaugment", "simclr_rand"):
        steps.append((_ra_name(randaugment_n, randaugment_m, randaugment_mstd),
                      partial(rand_augment, n=randaugment_n, m=randaugment_m, mstd=randaugment_mstd,
                              fill=tuple(mean))))
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


def build_torchvision_transform(preset: str, *, train: bool, image_size: int, crop_padding: int, flip: bool,
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
    of METHODS §2.4 (BCL's official transforms):

    * ``standard``, ``autoaugment``: RandomResizedCrop(image_size) replaces RandomCrop + padding.
    * ``randaugment`` (BCL's v0): RandomResizedCrop(image_size, scale 0.08-1), flip,
      ColorJitter(0.4, 0.4, 0.4, 0) always, RandAugment(n, m, mstd) with translations of
      ``int(0.45 * image_size)`` px at level 10 (100 px at 224, BCL's ``translate_const``).
    * ``simclr`` ("sim"): RandomResizedCrop(image_size, scale 0.08-1), flip, ColorJitter(0.4, 0.4,
      0.4, 0.1) with p 0.8, RandomGrayscale(p 0.2); no blur.
    * ``simclr_rand`` ("rand"): the sim view, then RandAugment as in ``randaugment``.

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
    large, sim = resize is not None, preset in ("simclr", "simclr_rand")
    if sim and not large:
        head = [T.RandomResizedCrop(image_size, scale=(0.2, 1.0))]
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
        if not large:  # the ImageNet sim view has no blur (METHODS §2.4)
            k = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            head.append(T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    if preset in ("randaugment", "simclr_rand"):
        shift = int(0.45 * image_size) if large else None
        tail.append(_TensorStep(
            f"RandAugment(n={randaugment_n}, m={randaugment_m}, mstd={randaugment_mstd}, translate_px={shift})",
            partial(rand_augment, n=randaugment_n, m=randaugment_m, mstd=randaugment_mstd, fill=tuple(mean),
                    translate_px=shift)))
    size = cutout or (16 if preset == "autoaugment" else 0)
    if size and not sim:
        post.append(_TensorStep(f"Cutout({size})", partial(_cutout, size=size)))
    return T.Compose(head + tail + post)
