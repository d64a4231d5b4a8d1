"""The two-branch recipe shared by BCL, SupCon + LA and BBL (docs/methods.md §2.2).

Each image gives three views, v0 for classification and v1, v2 for the contrastive branch; all 3B views
go through the backbone in one pass (so BatchNorm statistics cover all views); the logits of v0 train a
logit-adjusted CE, the projections of v1 and v2 the contrastive loss:

    L = alpha * CE(s(v0) + log pi, y) + beta * L_contrastive(z(v1), z(v2), y [, class centres])

Under DDP the embeddings and labels are all-gathered with gradient, and each rank averages the loss over
its own anchors against the global contrast set (docs/methods.md §2.6 item 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from longtail.data.batches import Batch
from longtail.engine import distributed as dist
from longtail.losses import LogitAdjustedLoss
from longtail.methods.base import Method, MethodConfig, param
from longtail.models import NetOutput
from longtail.models.contrastive import build_contrastive_network

#: the contrastive views: "sim" (SimCLR-style) and "rand" (sim + RandAugment)
VIEW_PRESETS = {"sim": "simclr", "rand": "simclr_rand"}
CL_VIEWS = ("sim-sim", "sim-rand", "rand-rand")


@dataclass
class ContrastiveConfig(MethodConfig):
    """L = alpha * LA-CE(view 0) + beta * contrastive(views 1, 2)."""

    temperature: float = param(0.1, above=0, help="tau of the contrastive loss")
    alpha: float = param(2.0, at_least=0, help="weight of the logit-adjusted CE on view 0")
    beta: float = param(0.6, at_least=0, help="weight of the contrastive loss on views 1 and 2")
    la_tau: float = param(1.0, at_least=0, help="the logit adjustment of the classification branch")
    proj_hidden: int = param(512, at_least=1, help="projection / prototype MLP: d -> proj_hidden -> proj_dim")
    proj_dim: int = param(128, at_least=1, help="embedding size of the contrastive branch")
    cl_views: str = param("sim-sim", choices=CL_VIEWS, help="the presets of views 1 and 2 (sim: SimCLR-style, "
                                                            "rand: sim + RandAugment)")


class TwoBranch(Method):
    """Shared machinery: three views, one backbone pass, LA-CE on v0 plus a contrastive loss on v1, v2."""

    num_views = 3
    accumulates = False  # the contrastive loss compares every pair of samples in the batch
    uses_prototypes = True

    def make_criterion(self):
        return LogitAdjustedLoss(self.counts, tau=self.params.la_tau)

    #: the augmentation preset of each contrastive view name of ``cl_views``
    contrastive_presets: ClassVar[dict] = VIEW_PRESETS

    @classmethod
    def presets(cls, params: ContrastiveConfig, augment: str) -> list[str]:
        a, b = params.cl_views.split("-")
        return [augment, cls.contrastive_presets[a], cls.contrastive_presets[b]]

    def build_network(self, num_classes: int, in_channels: int):
        m = self.params
        return build_contrastive_network(self.model_cfg, num_classes, in_channels, proj_hidden=m.proj_hidden,
                                         proj_dim=m.proj_dim, prototypes=self.uses_prototypes)

    def network_input(self, batch: Batch) -> torch.Tensor:
        return torch.cat(batch.views[:3])

    def network_output(self, out: NetOutput, batch: Batch) -> NetOutput:
        b = batch.labels.numel()
        z = F.normalize(out.embeddings["proj"].float(), dim=1)
        emb = {"z": torch.stack([z[b:2 * b], z[2 * b:3 * b]], dim=1)}  # [B, 2, d_z]: views 1 and 2
        if "prototypes" in out.embeddings:
            emb["prototypes"] = out.embeddings["prototypes"]
        return NetOutput(features=out.features[:b], logits=out.logits[:b], embeddings=emb)

    def contrastive(self, z: torch.Tensor, labels: torch.Tensor, prototypes, local):
        raise NotImplementedError

    def loss(self, batch: Batch, output: NetOutput):
        m = self.params
        la = self.criterion(output.logits, batch.labels)
        z, y = output.embeddings["z"], batch.labels
        local = None
        if dist.world_size() > 1:  # the loss sees the global batch; gradients flow back to every rank
            local = dist.local_range(y.numel())
            z, y = dist.all_gather_with_grad(z), dist.all_gather_no_grad(y)
        con, parts = self.contrastive(z, y, output.embeddings.get("prototypes"), local)
        return m.alpha * la + m.beta * con, {"la": la.detach(), "contrastive": con.detach(), **parts}
