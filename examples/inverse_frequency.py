"""A longtail plugin: a method defined outside the package.

Cross-entropy re-weighted by inverse class frequency, w_c = (n_max / n_c) ** power, normalised so that
the weights average to 1 over the training images (power 1: every class has the same total weight; 0:
plain CE). A classic re-weighting baseline, in one file.

Use it with any command, either in the config::

    plugins: [examples/inverse_frequency.py]
    method:
      name: inverse_frequency
      power: 0.5

or on the command line: ``longtail train --plugin examples/inverse_frequency.py --config ...
method.name=inverse_frequency``. The run records the plugin in its config.yaml, so ``longtail eval``,
``report`` and ``compare`` find it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail.methods import Method, MethodConfig, param, register_method


@dataclass
class InverseFrequencyConfig(MethodConfig):
    power: float = param(1.0, at_least=0, help="w_c proportional to n_c ** -power (0: plain CE)")


class InverseFrequencyLoss(nn.Module):
    """sum_i w_{y_i} CE_i / sum_i w_{y_i} over the batch. Shape: logits [B, C], targets [B] -> scalar."""

    def __init__(self, counts: np.ndarray, power: float) -> None:
        super().__init__()
        n = torch.as_tensor(counts, dtype=torch.float64)
        w = n.pow(-power)
        w = w * n.sum() / (n * w).sum()  # the average weight over the training images is 1
        self.register_buffer("weight", w.to(torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """``sample_weight`` [B] (Remix's per-sample label weights, train.mix=remix) multiplies each sample's
        term; the normaliser stays sum_i w_{y_i}."""
        if sample_weight is None:
            return F.cross_entropy(logits.float(), targets, weight=self.weight)
        w = self.weight[targets]
        terms = F.cross_entropy(logits.float(), targets, reduction="none")
        return (sample_weight * w * terms).sum() / w.sum()

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """w_{y_i} per sample: train.accumulate weighs each micro-batch by its share of sum_i w_{y_i}."""
        return self.weight[targets]


@register_method("inverse_frequency", params=InverseFrequencyConfig)
class InverseFrequency(Method):
    """Inverse-frequency re-weighted cross-entropy with instance-balanced sampling."""

    def make_criterion(self):
        return InverseFrequencyLoss(self.counts, self.params.power)
