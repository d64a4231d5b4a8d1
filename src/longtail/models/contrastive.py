"""The two-branch network of BCL / BBL / SupCon (docs/methods.md §2.1).

A shared backbone feeds the classifier (cosine head, sigma = 30 for BCL and BBL) and a projection MLP g;
a prototype MLP q of the same shape maps each classifier row w_k to a class centre
``c_k = normalize(q(w_k))``. q reads classifier rows, not features, so it is not one of the feature
heads; it is still a submodule, so the optimiser, the checkpoints and DDP see its parameters. At test
time only the classifier is used.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from longtail.config import ModelConfig
from longtail.models.backbones import create_backbone
from longtail.models.heads import ProjectionMLP, build_head
from longtail.models.network import Network


class ContrastiveNetwork(Network):
    """Network + projection head ``heads["proj"]`` (g) + optional prototype head ``proto`` (q).

    Shape:
        forward(x [B, C_in, H, W]) -> NetOutput(features [B, d], logits [B, C], embeddings {"proj": [B, d_z],
        "prototypes": [C, d_z] when the network has a prototype head}); prototypes() -> [C, d_z], L2-normalised.
    """

    def __init__(self, backbone, classifier, proj: ProjectionMLP, proto: Optional[ProjectionMLP] = None):
        super().__init__(backbone, classifier, heads={"proj": proj})
        self.proto = proto

    def forward(self, x: Tensor):
        """The network's output; with a prototype head its embeddings also hold ``"prototypes"`` [C, d_z]."""
        out = super().forward(x)
        if self.proto is not None:
            out.embeddings["prototypes"] = self.prototypes()
        return out

    def prototypes(self) -> Tensor:
        """Class centres from the current classifier rows; gradients reach the classifier through them.

        q's BatchNorm normalises across the C class rows in train mode (as in the official code).
        """
        if self.proto is None:
            raise RuntimeError("this network was built without a prototype head")
        return F.normalize(self.proto(self.classifier.weight).float(), dim=1)


def build_contrastive_network(model_cfg: ModelConfig, num_classes: int, in_channels: int, *, proj_hidden: int,
                              proj_dim: int, prototypes: bool) -> ContrastiveNetwork:
    backbone = create_backbone(model_cfg.backbone, in_channels=in_channels, width=model_cfg.width)
    d = int(backbone.out_dim)
    classifier = build_head(model_cfg.head, d, num_classes, scale=model_cfg.scale)
    proj = ProjectionMLP(d, proj_hidden, proj_dim)
    proto = ProjectionMLP(d, proj_hidden, proj_dim) if prototypes else None
    return ContrastiveNetwork(backbone, classifier, proj, proto)
