"""Cross-entropy with instance-balanced sampling: the baseline every method is compared with."""

from __future__ import annotations

from longtail.losses import CrossEntropyLoss
from longtail.methods.base import Method, MethodConfig, register_method


@register_method("ce", params=MethodConfig)
class CE(Method):
    """Cross-entropy with instance-balanced sampling. No parameters of its own."""

    def make_criterion(self):
        return CrossEntropyLoss()
