"""The Gaussian-mixture base density and the full flow model log p(x|k) (docs/methods.md §4.3)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from longtail.stage2.dlsa.flow import Flow


class GaussianMixture(nn.Module):
    """K isotropic unit-variance Gaussians with equal weights 1/K.

    The means μ_k ~ N(0, std²·I) are drawn once from ``generator`` and kept as a buffer: they are
    not learned (parity with the official code).

    Shape:
        means: [K, d].
    """

    def __init__(self, num_components: int, dim: int, std: float = 0.05,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.register_buffer("means", torch.randn(num_components, dim, generator=generator) * std)

    def component_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """log N(u; μ_k, I) for every k. Shape: u [B, d] -> [B, K]."""
        d = u.shape[1]
        # ‖u − μ‖² expanded: cdist-free, one matmul, fine for K = 500 and d = 2048
        sq = (u * u).sum(1, keepdim=True) - 2 * u @ self.means.T + (self.means * self.means).sum(1)[None, :]
        return -0.5 * d * math.log(2 * math.pi) - 0.5 * sq.clamp_min(0)


class GMFlow(nn.Module):
    """Flow T plus the mixture: log p(x|k) = log N(T(x); μ_k, I) + log|det J_T(x)|.

    Args:
        dim: d.
        num_clusters: K.
        hidden_layers: hidden-to-hidden layers per MADE.
        centre_std: std of the mixture means.
        generator: seeds the MADE weights and the means.
    """

    def __init__(self, dim: int, num_clusters: int, hidden_layers: int = 1, centre_std: float = 0.05,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.flow = Flow(dim, hidden_layers, generator)
        self.mixture = GaussianMixture(num_clusters, dim, centre_std, generator)

    @property
    def num_clusters(self) -> int:
        return self.mixture.means.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x|k). Shape: x [B, d] -> [B, K]."""
        u, logdet = self.flow(x)
        return self.mixture.component_log_prob(u) + logdet[:, None]

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """T(x). Shape: x [B, d] -> [B, d]."""
        return self.flow(x)[0]


def log_prob(log_pxk: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp_k log p(x|k) − log K. Shape: [B, K] -> [B]."""
    return torch.logsumexp(log_pxk, dim=1) - math.log(log_pxk.shape[1])


def log_posterior(log_pxk: torch.Tensor) -> torch.Tensor:
    """log q(k|x) = log_softmax_k log p(x|k). Shape: [B, K] -> [B, K]."""
    return torch.log_softmax(log_pxk, dim=1)


@torch.no_grad()
def score(model: GMFlow, features: torch.Tensor | np.ndarray, chunk_size: int = 8192,
          device: Optional[torch.device] = None, with_latent: bool = False):
    """log p(x) and the cluster argmax_k q(k|x) for every row, in eval mode, streamed in chunks.

    Only one chunk of the features lives on ``device`` at a time, so iNat-sized inputs (kept on the
    host) never need to fit on the GPU.

    Shape:
        features: [N, d] -> (ll float32 [N], cluster int32 [N]) on the CPU, plus latent float32
        [N, d] when ``with_latent``.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    n = features.shape[0]
    ll = torch.empty(n, dtype=torch.float32)
    cluster = torch.empty(n, dtype=torch.int32)
    latent = torch.empty(n, features.shape[1], dtype=torch.float32) if with_latent else None
    for start in range(0, n, chunk_size):
        x = torch.as_tensor(features[start:start + chunk_size]).to(device=device, dtype=torch.float32)
        u, logdet = model.flow(x)
        lpk = model.mixture.component_log_prob(u) + logdet[:, None]
        ll[start:start + x.shape[0]] = log_prob(lpk).float().cpu()
        cluster[start:start + x.shape[0]] = lpk.argmax(dim=1).to(torch.int32).cpu()
        if latent is not None:
            latent[start:start + x.shape[0]] = u.float().cpu()
    model.train(was_training)
    return (ll, cluster, latent) if with_latent else (ll, cluster)
