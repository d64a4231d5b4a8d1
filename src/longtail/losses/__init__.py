"""Losses for long-tailed training (docs/methods.md §0.2, §1, §2, §3).

Every loss is an ``nn.Module`` with ``forward(logits [B, C], targets [B] int64) -> scalar float32``;
logits of any float dtype are cast to float32 first and class statistics live in buffers. The
buffers are non-persistent (not in ``state_dict``): a loss is rebuilt from the config and the class
counts, and DRW re-derives its weights from the epoch, so checkpoints never carry loss state. The
exceptions are BBL's stateful variants (R3's epoch memory, R4's queue) and ProCo's class statistics,
whose buffers are persistent.

Contrastive losses take ``(embeddings [N, V, D], labels [N][, prototypes [K, D]])``.

Use any of them in your own loop::

    from longtail.losses import LogitAdjustedLoss
    loss_fn = LogitAdjustedLoss(class_counts, tau=1.0)
    loss = loss_fn(logits, targets)
"""

from longtail.losses.bbl import BBLLoss, BBLOutput, BBLSets, bbl_class_weights, bbl_sets
from longtail.losses.bcl import BCLLoss
from longtail.losses.class_balanced import ClassBalancedLoss, class_balanced_weights
from longtail.losses.cross_entropy import CrossEntropyLoss, weighted_cross_entropy
from longtail.losses.focal import FocalLoss, focal_loss
from longtail.losses.ldam import LDAMLoss, ldam_margins
from longtail.losses.logit_adjusted import BalancedSoftmaxLoss, LogitAdjustedLoss, log_prior, posthoc_adjust
from longtail.losses.proco import ProCoLoss, ProCoOutput
from longtail.losses.supcon import SupConLoss

__all__ = [
    "BBLLoss",
    "BBLOutput",
    "BBLSets",
    "BCLLoss",
    "ProCoLoss",
    "ProCoOutput",
    "SupConLoss",
    "bbl_class_weights",
    "bbl_sets",
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
