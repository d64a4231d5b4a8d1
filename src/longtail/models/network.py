"""``Network`` = backbone + classifier + optional feature heads, and its output record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from longtail.config import ModelConfig
from longtail.errors import ConfigError
from longtail.models.backbones import create_backbone
from longtail.models.finetune import apply_train_mode
from longtail.models.heads import build_head


@dataclass
class NetOutput:
    """What one forward pass returns.

    Attributes:
        features: pooled backbone features h, [B, d].
        logits: classifier scores s, [B, C].
        embeddings: one entry per extra head, ``name -> head(features)``, e.g. ``{"proj": [B, d_z]}``.
    """

    features: Tensor
    logits: Tensor
    embeddings: dict[str, Tensor]


class Network(nn.Module):
    """A backbone, a classifier over its features, and optional extra heads over the same features.

    Extra heads (``heads``) are applied to the features on every forward pass. Heads that consume
    something else (BCL's prototype MLP reads classifier rows) belong to the method, not here.

    Args:
        backbone: module with int ``out_dim``; maps images to features [B, d].
        classifier: module with ``.weight`` of shape [C, d]; maps features to logits [B, C].
        heads: optional named feature heads.

    Shape:
        x: [B, in_channels, H, W] -> NetOutput(features [B, d], logits [B, C], embeddings).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 heads: Optional[dict[str, nn.Module]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(backbone.out_dim)
        _check_classifier(classifier, self.out_dim)
        self.classifier = classifier
        self.heads = nn.ModuleDict(heads or {})
        # fine-tuning (models/finetune.py): backbone submodules kept in eval mode, and frozen BN statistics
        self.frozen_modules: tuple[str, ...] = ()
        self.freeze_bn = False

    def train(self, mode: bool = True) -> "Network":
        """The usual mode switch; frozen stages and (``freeze_bn``) the backbone's BatchNorm layers stay in
        eval mode while training."""
        super().train(mode)
        if self.frozen_modules or self.freeze_bn:
            apply_train_mode(self)
        return self

    @property
    def num_classes(self) -> int:
        return int(self.classifier.weight.shape[0])

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, in_channels, H, W] -> features [B, d]."""
        return self.backbone(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Features [B, d] -> logits [B, C]."""
        return self.classifier(features)

    def forward(self, x: Tensor) -> NetOutput:
        features = self.forward_features(x)
        logits = self.forward_head(features)
        embeddings = {name: head(features) for name, head in self.heads.items()}
        return NetOutput(features=features, logits=logits, embeddings=embeddings)

    def reset_classifier(self, new_head: nn.Module) -> None:
        """Replace the classifier (cRT, LWS, τ-norm). ``new_head.weight`` must be [C, d]."""
        _check_classifier(new_head, self.out_dim)
        self.classifier = new_head


def _check_classifier(head: nn.Module, out_dim: int) -> None:
    weight = getattr(head, "weight", None)
    if weight is None or weight.dim() != 2:
        raise ValueError(f"a classifier must store its weights as C×d rows in .weight (got {type(head).__name__})")
    if weight.shape[1] != out_dim:
        raise ValueError(f"classifier expects {weight.shape[1]}-d features but the backbone gives {out_dim}-d; "
                         f"build the head with in_dim={out_dim}")


def build_network(model_cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> Network:
    """Backbone ``model_cfg.backbone`` (width ``model_cfg.width``) plus a ``model_cfg.head`` classifier.

    Raises:
        ConfigError: unknown backbone or head, bad width/scale, or num_classes < 1.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (got {num_classes})")
    backbone = create_backbone(model_cfg.backbone, in_channels=in_channels, width=model_cfg.width)
    classifier = build_head(model_cfg.head, backbone.out_dim, num_classes, scale=model_cfg.scale)
    return Network(backbone, classifier)
