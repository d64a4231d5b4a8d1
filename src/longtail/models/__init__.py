"""Backbones, heads and the ``Network`` that combines them."""

from longtail.models.backbones import create_backbone, list_backbones, register_backbone
from longtail.models.heads import CosineHead, LinearHead, ProjectionMLP, build_head
from longtail.models.network import Network, NetOutput, build_network
from longtail.models.resnet_cifar import (
    CifarResNet,
    resnet8,
    resnet14,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)

__all__ = [
    "CifarResNet",
    "CosineHead",
    "LinearHead",
    "NetOutput",
    "Network",
    "ProjectionMLP",
    "build_head",
    "build_network",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]
