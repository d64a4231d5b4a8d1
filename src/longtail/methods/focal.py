"""Focal loss (Lin et al., ICCV 2017): -(1 - p_y)^gamma log p_y; gamma = 1 in the LDAM CIFAR baseline."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import FocalLoss
from longtail.methods.base import Method, MethodConfig, param, register_method

FOCAL_PARITIES = ("default", "ldam")


@dataclass
class FocalConfig(MethodConfig):
    focal_gamma: float = param(1.0, at_least=0, help="focusing parameter gamma (1 in the LDAM CIFAR baseline)")
    focal_parity: str = param("default", choices=FOCAL_PARITIES, help="default, or ldam: LDAM-DRW's variant")


@register_method("focal", params=FocalConfig)
class Focal(Method):
    """Focal loss with instance-balanced sampling."""

    def make_criterion(self):
        return FocalLoss(gamma=self.params.focal_gamma, parity=self.params.focal_parity)
