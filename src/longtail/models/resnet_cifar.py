"""CIFAR ResNets (He et al. 2016, §4.2) in the LDAM-DRW convention (docs/methods.md §0.3).

Depth 6n + 2: a 3×3 stem conv (``width`` channels) + BN + ReLU, then three stages of n BasicBlocks with
``width``, ``2·width`` and ``4·width`` channels and strides 1, 2, 2, then global average pooling. Where a
block changes shape, the shortcut is "option A": subsample by the stride and zero-pad the new channels,
so shortcuts carry no parameters. Conv (and any linear) weights get Kaiming-normal init (fan-in, ReLU
gain), BN starts at weight 1, bias 0. ResNet-32 with a 10-class linear head has about 0.46M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` then zero channels split evenly before and after.

    Shape:
        [B, in_ch, H, W] -> [B, out_ch, ceil(H/s), ceil(W/s)].
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_ch} -> {out_ch})")
        self.stride = stride
        extra = out_ch - in_ch
        # Even split, as in the original CIFAR ResNet (planes//4 on each side when channels double).
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = (
            ZeroPadShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet backbone of depth 6n + 2; returns pooled features.

    Args:
        depth: 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...).
        in_channels: input image channels.
        width: channels of the first stage; the stages have width, 2·width, 4·width.

    Attributes:
        out_dim: feature size, ``4 * width`` (64 for the standard width 16).

    Shape:
        x: [B, in_channels, H, W] -> features [B, out_dim].
    """

    def __init__(self, depth: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, e.g. 20, 32, 56 (got {depth})")
        if width < 1 or in_channels < 1:
            raise ConfigError(f"width and in_channels must be >= 1 (got width={width}, in_channels={in_channels})")
        n = (depth - 2) // 6
        self.depth = depth
        self.out_dim = 4 * width
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_ch = width
        for out_ch, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = [BasicBlock(in_ch, out_ch, stride)]
            blocks += [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in, gain sqrt 2) on conv/linear weights; BN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


CIFAR_DEPTHS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
                "resnet56": 56, "resnet110": 110}


def _zoo(depth: int):
    def build(in_channels: int = 3, width: int = 16) -> CifarResNet:
        return CifarResNet(depth, in_channels, width)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}: {(depth - 2) // 6} basic blocks per stage, option-A shortcuts."
    return build


resnet8, resnet14, resnet20, resnet32, resnet44, resnet56, resnet110 = (_zoo(d) for d in CIFAR_DEPTHS.values())
