"""Models: backbones, classifier heads and the ``Network`` that combines them.

* Backbones by name (``create_backbone``; ``BACKBONES`` registry): the CIFAR ResNets ``resnet8`` …
  ``resnet110`` (option-A shortcuts) and torchvision ResNets/ResNeXts; ``register_backbone`` adds yours.
* Heads: ``LinearHead``, ``CosineHead`` (σ·cosine, float32 under autocast), ``ProjectionMLP``; the
  stage-2 ``LWSHead`` and ``tau_normalize``; ``build_head`` by name (``HEADS`` registry).
* ``Network`` = backbone + classifier (+ feature heads), returning a ``NetOutput`` (features, logits,
  embeddings); ``build_network`` from the ``model`` config section.
"""

from longtail.models.backbones import create_backbone, list_backbones, register_backbone
from longtail.models.heads import CosineHead, LinearHead, LWSHead, ProjectionMLP, build_head, tau_normalize
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
    "LWSHead",
    "tau_normalize",
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
