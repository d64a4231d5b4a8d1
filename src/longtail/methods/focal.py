"""Focal loss (Lin et al., ICCV 2017): -(1 - p_y)^gamma log p_y; gamma = 1 in the LDAM CIFAR baseline."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import FocalLoss
from longtail.errors import ConfigError
from longtail.methods.base import Method, MethodConfig, label_smoothing_param, param, register_method

FOCAL_PARITIES = ("default", "ldam")


@dataclass
class FocalConfig(MethodConfig):
    focal_gamma: float = param(1.0, at_least=0, help="focusing parameter gamma (1 in the LDAM CIFAR baseline)")
    focal_parity: str = param("default", choices=FOCAL_PARITIES, help="default, or ldam: LDAM-DRW's variant")
    label_smoothing: float = label_smoothing_param()

    def uses_focal(self) -> bool:
        """The loss is the focal loss (which has no label-smoothed form)."""
        return True

    def check(self) -> None:
        super().check()
        if self.label_smoothing and self.uses_focal():
            raise ConfigError(f"method.label_smoothing={self.label_smoothing} is not defined for the focal loss (its "
                              f"factor (1 - p_y)^gamma concerns the label's class only); set it to 0, or use the "
                              f"cross-entropy (method ce, la, ldam_drw, or cb with cb_loss=ce)")


@register_method("focal", params=FocalConfig)
class Focal(Method):
    """Focal loss with instance-balanced sampling."""

    def make_criterion(self):
        return FocalLoss(gamma=self.params.focal_gamma, parity=self.params.focal_parity)
