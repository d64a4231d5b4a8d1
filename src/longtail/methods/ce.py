"""Cross-entropy with instance-balanced sampling: the baseline every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from longtail.losses import CrossEntropyLoss
from longtail.methods.base import Method, MethodConfig, label_smoothing_param, register_method


@dataclass
class CEConfig(MethodConfig):
    label_smoothing: float = label_smoothing_param()


@register_method("ce", params=CEConfig)
class CE(Method):
    """Cross-entropy with instance-balanced sampling; optional label smoothing."""

    def make_criterion(self):
        return CrossEntropyLoss(label_smoothing=self.params.label_smoothing)
