"""Cross-entropy with instance-balanced sampling: the baseline every method is compared with."""

from __future__ import annotations

from longtail.losses import CrossEntropyLoss
from longtail.methods.base import Method, MethodConfig, register_method


@register_method("ce")
class CE(Method):
    """Cross-entropy with instance-balanced sampling. No parameters of its own."""

    Params = MethodConfig

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.criterion = CrossEntropyLoss()
