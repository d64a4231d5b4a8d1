"""BCL: balanced contrastive learning (Zhu et al., CVPR 2022), exactly as docs/methods.md §2.3."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import BCLLoss
from longtail.methods.base import param, register_method
from longtail.methods.contrastive import ContrastiveConfig, TwoBranch


@dataclass
class BCLConfig(ContrastiveConfig):
    class_averaging: bool = param(True, help="average the negatives per class (BCL's ablation switch)")
    class_complement: bool = param(True, help="add the class centres to the contrast set (BCL's ablation switch)")


@register_method("bcl", params=BCLConfig)
class BCL(TwoBranch):
    """Balanced contrastive learning: class-averaged, class-complemented SupCon with class centres."""

    def __init__(self, params: BCLConfig, **kw):
        super().__init__(params, **kw)
        self.bcl = BCLLoss(temperature=params.temperature, class_averaging=params.class_averaging,
                           class_complement=params.class_complement)

    def contrastive(self, z, y, prototypes, local):
        return self.bcl(z, y, prototypes, local_range=local), {}
