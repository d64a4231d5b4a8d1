"""Backbone registry: a name -> factory dict plus a decorator.

Every backbone maps images to pooled features and has an integer ``out_dim``:

    backbone = create_backbone("resnet32")           # CIFAR ResNet, 64-d
    backbone = create_backbone("resnet18", in_channels=1)

CIFAR ResNets (``resnet8`` ... ``resnet110``) and torchvision ResNets/ResNeXts/wide ResNets are
registered. Torchvision models are built with random init (``weights=None``; nothing is downloaded), in
torchvision's v1.5 layout, its Kaiming fan-out init and no zero-init of the blocks' last BN
(``zero_init_residual=False``, docs/methods.md §0.3); their ``fc`` becomes ``nn.Identity``.

Register your own with::

    @register_backbone("my_net")
    def my_net(*, in_channels: int, width: int) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from longtail.errors import ConfigError
from longtail.models import resnet_cifar
from longtail.registry import BACKBONES

BackboneFactory = Callable[..., nn.Module]
_REGISTRY = BACKBONES._entries  # the registry's own dict (tests remove their temporary entries from it)

#: torchvision classification models we expose by name (their ``fc`` is removed).
TORCHVISION_BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
#: the width CIFAR ResNets use by default; torchvision backbones accept only this value.
DEFAULT_WIDTH = 16


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``fn(*, in_channels, width) -> nn.Module`` under ``name``."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order (CIFAR ResNets first)."""
    return BACKBONES.names()


def create_backbone(name: str, *, in_channels: int = 3, width: int = DEFAULT_WIDTH) -> nn.Module:
    """Build a registered backbone with random init.

    Args:
        name: a name from :func:`list_backbones`.
        in_channels: input image channels.
        width: first-stage channels of CIFAR ResNets; other backbones accept only the default 16.

    Returns:
        an ``nn.Module`` mapping [B, in_channels, H, W] to features [B, out_dim], with int ``out_dim``.

    Raises:
        ConfigError: unknown name (with the closest match) or an unsupported width.
    """
    model = BACKBONES.get(name)(in_channels=in_channels, width=width)
    if not isinstance(getattr(model, "out_dim", None), int):
        raise TypeError(f"backbone factory '{name}' must return a module with an int attribute out_dim")
    return model


# ----------------------------------------------------------------------------------------------------
# CIFAR ResNets


def _register_cifar(name: str, depth: int) -> None:
    @register_backbone(name)
    def factory(*, in_channels: int, width: int) -> nn.Module:
        return resnet_cifar.CifarResNet(depth, in_channels=in_channels, width=width)


for _name, _depth in resnet_cifar.CIFAR_DEPTHS.items():
    _register_cifar(_name, _depth)


# ----------------------------------------------------------------------------------------------------
# torchvision


def torchvision_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """A randomly initialised torchvision model with ``fc = Identity`` and ``out_dim`` set.

    For ``in_channels != 3`` the stem conv is replaced by one of the same geometry, initialised the
    way torchvision initialises convs (Kaiming normal, fan-out).

    Shape:
        x: [B, in_channels, H, W] -> features [B, out_dim] (512 for resnet18/34, 2048 for the others).
    """
    model = torchvision.models.get_model(name, weights=None)
    out_dim = model.fc.in_features
    model.fc = nn.Identity()
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                                stride=old.stride, padding=old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.out_dim = out_dim
    return model


def _register_torchvision(name: str) -> None:
    @register_backbone(name)
    def factory(*, in_channels: int, width: int) -> nn.Module:
        if width != DEFAULT_WIDTH:
            raise ConfigError(f"model.width={width} only applies to CIFAR ResNets "
                              f"({', '.join(resnet_cifar.CIFAR_DEPTHS)}); leave it at {DEFAULT_WIDTH} for {name}")
        return torchvision_backbone(name, in_channels=in_channels)


for _name in TORCHVISION_BACKBONES:
    _register_torchvision(_name)
