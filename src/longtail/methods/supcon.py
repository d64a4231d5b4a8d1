"""SupCon + LA: the supervised contrastive loss (Khosla et al., NeurIPS 2020, L_out) on views 1 and 2,
plus logit-adjusted CE on view 0."""

from __future__ import annotations

from longtail.losses import SupConLoss
from longtail.methods.base import register_method
from longtail.methods.contrastive import ContrastiveConfig, TwoBranch


@register_method("supcon", params=ContrastiveConfig)
class SupConLA(TwoBranch):
    """SupCon (no class centres) + LA-CE."""

    uses_prototypes = False

    def __init__(self, params: ContrastiveConfig, **kw):
        super().__init__(params, **kw)
        self.supcon = SupConLoss(temperature=params.temperature)

    def contrastive(self, z, y, prototypes, local):
        return self.supcon(z, y, local_range=local), {}
