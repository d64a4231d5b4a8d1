"""The masked autoregressive flow of DLSA's Gaussian-mixture flow (docs/methods.md §4.3).

T = MADE₁ → BN₁ → MADE₂ → BN₂ keeps the dimension d. Each block returns its output and the log
|det| of its Jacobian, so log p(x) = log N_mix(T(x)) + Σ log|det|.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def _uniform_init(weight: torch.Tensor, bias: torch.Tensor, generator: Optional[torch.Generator]) -> None:
    # The same bounds as nn.Linear's default init, but drawn from an explicit generator so that a
    # flow is reproducible without touching torch's global RNG.
    bound = 1.0 / math.sqrt(weight.shape[1])
    with torch.no_grad():
        w = torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1
        b = torch.rand(bias.shape, generator=generator, dtype=torch.float64) * 2 - 1
        weight.copy_(w * bound)
        bias.copy_(b * bound)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer, not learned).

    Shape:
        mask: [out, in]; input [B, in] -> output [B, out].
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """One MADE block: an autoregressive affine transform u = (x − m(x_<j))·exp(−log a(x_<j)).

    Layers: Linear(d→d) → ReLU → [Linear(d→d) → ReLU] × hidden_layers → Linear(d→2d), all masked.
    With the official ``n_hidden = 1`` that is two hidden layers.

    Args:
        dim: d (>= 2; d = 1 leaves the mask with no connections at all).
        reverse: False: order 0, 1, …, d−1 (block 1); True: the reversed order (block 2).
        hidden_layers: hidden-to-hidden layers.
        generator: seeds the weight init.
    """

    def __init__(self, dim: int, reverse: bool = False, hidden_layers: int = 1,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"MADE needs dim >= 2 (got {dim})")
        self.dim = dim
        order = torch.arange(dim)
        # degree of input coordinate j = its 1-based position in the block's order
        deg_in = (dim - order) if reverse else (order + 1)
        # hidden degrees cycle through 1..d-1 (the original MADE's deterministic assignment)
        deg_hidden = torch.arange(dim) % (dim - 1) + 1
        masks = [(deg_hidden[:, None] >= deg_in[None, :])]  # [hidden, in]
        for _ in range(hidden_layers):
            masks.append(deg_hidden[:, None] >= deg_hidden[None, :])
        deg_out = torch.cat([deg_in, deg_in])  # m and log a for each coordinate
        masks.append(deg_out[:, None] > deg_hidden[None, :])
        layers: list[nn.Module] = []
        for i, m in enumerate(masks):
            lin = MaskedLinear(m)
            _uniform_init(lin.weight, lin.bias, generator)
            layers.append(lin)
            if i < len(masks) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.register_buffer("order", order.flip(0) if reverse else order)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: x [B, d] -> (u [B, d], log|det| [B])."""
        m, log_a = self.net(x).chunk(2, dim=1)
        return (x - m) * torch.exp(-log_a), -log_a.sum(dim=1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Invert coordinate by coordinate in the block's order (d passes). Shape: u [B, d] -> x [B, d]."""
        x = torch.zeros_like(u)
        for j in self.order.tolist():
            m, log_a = self.net(x).chunk(2, dim=1)
            x[:, j] = u[:, j] * torch.exp(log_a[:, j]) + m[:, j]
        return x


class FlowBatchNorm(nn.Module):
    """RealNVP-style batch normalisation as a flow layer.

    y = exp(log γ)·(u − μ)/sqrt(v + ε) + β. Training uses the batch mean and the unbiased batch
    variance and updates running ← (1 − momentum)·running + momentum·batch; eval uses the running
    statistics, so the map is then a fixed affine bijection.
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: u [B, d] -> (y [B, d], log|det| [B])."""
        if self.training:
            mean, var = u.mean(dim=0), u.var(dim=0, unbiased=True)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach())
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (u - mean) / torch.sqrt(var + self.eps) + self.beta
        logdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, logdet.expand(u.shape[0])

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Eval-mode inverse. Shape: y [B, d] -> u [B, d]."""
        return (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(self.running_var + self.eps) + self.running_mean


class Flow(nn.Module):
    """T = MADE₁ (sequential order) → BN₁ → MADE₂ (reversed order) → BN₂.

    Args:
        dim: feature dimension d (>= 2).
        hidden_layers: hidden-to-hidden layers per MADE.
        generator: seeds the MADE weights.
    """

    def __init__(self, dim: int, hidden_layers: int = 1, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList([
            MADE(dim, reverse=False, hidden_layers=hidden_layers, generator=generator),
            FlowBatchNorm(dim),
            MADE(dim, reverse=True, hidden_layers=hidden_layers, generator=generator),
            FlowBatchNorm(dim),
        ])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: x [B, d] -> (u = T(x) [B, d], log|det J_T(x)| [B])."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """T⁻¹ with the eval-mode (running) statistics. Shape: u [B, d] -> x [B, d]."""
        for layer in reversed(self.layers):
            u = layer.inverse(u)
        return u
