"""The contrastive methods: BCL, SupCon + LA, and BBL (our reconstruction).

One recipe (METHODS.md §2.2): each image gives three views, v0 for classification and v1, v2 for the
contrastive branch; all 3B views go through the backbone in one pass (so BatchNorm statistics cover all
views); the logits of v0 train a logit-adjusted CE, the projections of v1 and v2 the contrastive loss:

    L = alpha * CE(s(v0) + log pi, y) + beta * L_contrastive(z(v1), z(v2), y [, class centres])

Under DDP the embeddings and labels are all-gathered with gradient, and each rank averages the loss over
its own anchors against the global contrast set (METHODS §2.6 item 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longtail.data.batches import Batch
from longtail.engine import distributed as dist
from longtail.losses import BBLLoss, BCLLoss, LogitAdjustedLoss, SupConLoss
from longtail.methods.base import Method, register_method
from longtail.models import NetOutput
from longtail.models.contrastive import build_contrastive_network

VIEW_PRESETS = {"sim": "simclr", "rand": "simclr_rand"}


class TwoBranch(Method):
    """Shared machinery: three views, one backbone pass, LA-CE on v0 plus a contrastive loss on v1, v2."""

    num_views = 3
    uses_prototypes = True

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        self.criterion = LogitAdjustedLoss(train_counts, tau=cfg.method.la_tau)

    def view_presets(self) -> list[str]:
        a, b = self.cfg.method.cl_views.split("-")
        return [self.cfg.data.augment, VIEW_PRESETS[a], VIEW_PRESETS[b]]

    def build_network(self, num_classes: int, in_channels: int):
        m = self.cfg.method
        return build_contrastive_network(self.cfg.model, num_classes, in_channels, proj_hidden=m.proj_hidden,
                                         proj_dim=m.proj_dim, prototypes=self.uses_prototypes)

    def forward_batch(self, network, batch: Batch) -> NetOutput:
        b = batch.labels.numel()
        out = network(torch.cat(batch.views[:3]))
        z = F.normalize(out.embeddings["proj"].float(), dim=1)
        emb = {"z": torch.stack([z[b:2 * b], z[2 * b:3 * b]], dim=1)}  # [B, 2, d_z]: views 1 and 2
        if self.uses_prototypes:
            emb["prototypes"] = network.prototypes()
        return NetOutput(features=out.features[:b], logits=out.logits[:b], embeddings=emb)

    def contrastive(self, z: torch.Tensor, labels: torch.Tensor, prototypes):
        raise NotImplementedError

    def loss(self, batch: Batch, output: NetOutput):
        m = self.cfg.method
        la = self.criterion(output.logits, batch.labels)
        z, y = output.embeddings["z"], batch.labels
        local = None
        if dist.world_size() > 1:  # the loss sees the global batch; gradients flow back to every rank
            local = dist.local_range(y.numel())
            z, y = dist.all_gather_with_grad(z), dist.all_gather_no_grad(y)
        con, parts = self.contrastive(z, y, output.embeddings.get("prototypes"), local)
        return m.alpha * la + m.beta * con, {"la": la.detach(), "contrastive": con.detach(), **parts}


@register_method("bcl")
class BCL(TwoBranch):
    """Balanced contrastive learning (Zhu et al., CVPR 2022), exactly as METHODS.md §2.3."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        m = cfg.method
        self.bcl = BCLLoss(temperature=m.temperature, class_averaging=m.class_averaging,
                           class_complement=m.class_complement)

    def contrastive(self, z, y, prototypes, local):
        return self.bcl(z, y, prototypes, local_range=local), {}


@register_method("supcon")
class SupConLA(TwoBranch):
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on views 1 and 2, plus LA-CE on view 0."""

    uses_prototypes = False

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        self.supcon = SupConLoss(temperature=cfg.method.temperature)

    def contrastive(self, z, y, prototypes, local):
        return self.supcon(z, y, local_range=local), {}


@register_method("bbl")
class BBL(TwoBranch):
    """BBL (reconstruction): bi-granularity balance. NOT the authors' method; see docs/methods/bbl.md."""

    def __init__(self, cfg, train_counts):
        super().__init__(cfg, train_counts)
        m = cfg.method
        self.bbl = BBLLoss(train_counts, temperature=m.temperature, gamma=m.bbl_gamma, lam=m.bbl_lambda,
                           global_mode=m.bbl_global_mode, kappa=m.bbl_kappa, variant=m.bbl_variant,
                           local_repulsion_only=m.bbl_local_repulsion_only,
                           r2_batch_positives=m.bbl_r2_batch_positives, queue_size=m.bbl_queue_size,
                           dim=m.proj_dim)

    def on_epoch_start(self, epoch: int, *, fresh: bool = True) -> None:
        if fresh and self.cfg.method.bbl_variant == "r3":
            self.bbl.start_epoch()

    def contrastive(self, z, y, prototypes, local):
        out = self.bbl(z, y, prototypes, local_range=local)
        return out.total, {"global": out.global_term.detach(), "local": out.local_term.detach()}
