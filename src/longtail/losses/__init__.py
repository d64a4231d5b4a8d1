"""Classification losses for long-tailed training (METHODS.md §0.2, §1).

Every loss is an ``nn.Module`` with ``forward(logits [B, C], targets [B] int64) -> scalar float32``;
logits of any float dtype are cast to float32 first and class statistics live in buffers. The
buffers are non-persistent (not in ``state_dict``): a loss is rebuilt from the config and the class
counts, and DRW re-derives its weights from the epoch, so checkpoints never carry loss state.
"""

from longtail.losses.class_balanced import ClassBalancedLoss, class_balanced_weights
from longtail.losses.cross_entropy import CrossEntropyLoss, weighted_cross_entropy
from longtail.losses.focal import FocalLoss, focal_loss
from longtail.losses.ldam import LDAMLoss, ldam_margins
from longtail.losses.logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss, log_prior, posthoc_adjust

__all__ = [
    "BalancedSoftmaxLoss",
    "ClassBalancedLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "class_balanced_weights",
    "focal_loss",
    "ldam_margins",
    "log_prior",
    "posthoc_adjust",
    "weighted_cross_entropy",
]
