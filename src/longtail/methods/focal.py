"""Focal loss (Lin et al., ICCV 2017): -(1 - p_y)^gamma log p_y; gamma = 1 in the LDAM CIFAR baseline."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import FocalLoss
from longtail.methods.base import Method, MethodConfig, check_value, register_method

FOCAL_PARITIES = ("default", "ldam")


@dataclass
class FocalConfig(MethodConfig):
    focal_gamma: float = 1.0
    focal_parity: str = "default"  # default | ldam (LDAM-DRW's variant)

    def check(self) -> None:
        check_value(self.focal_gamma >= 0, "focal_gamma", f"must be >= 0 (got {self.focal_gamma})")
        check_value(self.focal_parity in FOCAL_PARITIES, "focal_parity",
                    f"must be one of {', '.join(FOCAL_PARITIES)} (got '{self.focal_parity}')")


@register_method("focal")
class Focal(Method):
    """Focal loss with instance-balanced sampling."""

    Params = FocalConfig

    def __init__(self, params: FocalConfig, **kw):
        super().__init__(params, **kw)
        self.criterion = FocalLoss(gamma=params.focal_gamma, parity=params.focal_parity)
