"""Classifier and projection heads (docs/methods.md §0.4, §2.1).

Every classifier stores its weights as C×d rows in ``.weight`` [ours], so code that consumes class
rows (BCL's prototype MLP, τ-norm, LWS) works for any head type.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.errors import ConfigError
from longtail.registry import HEADS



class LinearHead(nn.Linear):
    """s = W h + b with W ∈ R^{C×d} (``nn.Linear`` semantics).

    Init: Kaiming normal (fan-in, gain sqrt 2) on W, as LDAM-DRW's CIFAR ResNet does for its linear
    layer; the bias keeps PyTorch's default uniform(±1/sqrt(d)) init, which that code also leaves alone.

    Shape:
        h: [B, in_dim] -> logits [B, num_classes].
    """

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True) -> None:
        _check_dims(in_dim, num_classes)
        super().__init__(in_dim, num_classes, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # default bias init
        nn.init.kaiming_normal_(self.weight)

    @property
    def num_classes(self) -> int:
        return self.out_features


class CosineHead(nn.Module):
    """Cosine ("normed linear") classifier: s_c = σ · normalize(h) · normalize(w_c), no bias.

    Init: every entry uniform(−1, 1), then each row rescaled to unit norm (parity with LDAM/BCL).

    Args:
        in_dim: feature size d.
        num_classes: C.
        scale: σ (30 for LDAM, BCL and BBL).

    Shape:
        h: [B, in_dim] -> logits [B, num_classes], each in [−σ, σ].
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        _check_dims(in_dim, num_classes)
        if not scale > 0:
            raise ConfigError(f"cosine head scale must be > 0 (got {scale}); LDAM/BCL use 30")
        self.in_dim, self.scale = in_dim, float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def cosine(self, h: Tensor) -> Tensor:
        """Unscaled cosines normalize(h)·normalize(w_c), in float32 (float64 for float64 inputs) even under
        autocast: a bf16 cosine has 8 significant bits, steps of up to 0.004, i.e. 0.12 in the logits at
        σ = 30, in training and in evaluation. Shape: [B, in_dim] -> [B, num_classes]."""
        with _full_precision(h.device.type):
            dt = torch.promote_types(torch.promote_types(h.dtype, self.weight.dtype), torch.float32)
            return F.linear(F.normalize(h.to(dt), dim=1), F.normalize(self.weight.to(dt), dim=1))

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * self.cosine(h)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, scale={self.scale}"


class ProjectionMLP(nn.Sequential):
    """Linear(in→hidden) → BatchNorm1d → ReLU → Linear(hidden→out) (docs/methods.md §2.1).

    Used for BCL's projection head g and prototype head q. The output is *not* normalised; the caller
    normalises. Layers keep PyTorch's default init.

    Shape:
        x: [N, in_dim] -> [N, out_dim]. In train mode BN needs N >= 2.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        for nm, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if v < 1:
                raise ConfigError(f"ProjectionMLP {nm} must be >= 1 (got {v})")
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim


HEADS.register("linear", lambda in_dim, num_classes, scale: LinearHead(in_dim, num_classes))
HEADS.register("cosine", lambda in_dim, num_classes, scale: CosineHead(in_dim, num_classes, scale=scale))


def build_head(kind: str, in_dim: int, num_classes: int, scale: float = 30.0) -> nn.Module:
    """A classifier head from the registry: ``"linear"`` (with bias), ``"cosine"`` (scale σ = ``scale``),
    or one registered with ``HEADS.register(name, factory)``, ``factory(in_dim, num_classes, scale)``."""
    if kind not in HEADS:
        raise ConfigError(f"model.head must be one of {', '.join(HEADS.names())} (got '{kind}')")
    return HEADS.get(kind)(in_dim, num_classes, scale)


# ------------------------------------------------------------------------------------------------
# stage-2 classifiers built from a trained linear head (Kang et al., ICLR 2020)


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """τ-norm rows: w̃_c = w_c / ‖w_c‖^τ (the bias is dropped by the caller). Shape: [C, D] -> [C, D]."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


class LWSHead(nn.Module):
    """Learnable weight scaling: s_c = f_c·(w_c·h + b_c) with W, b frozen and f initialised to 1.

    :meth:`folded` multiplies the scales into W and b, giving an ordinary linear head.

    Shape:
        h: [B, D] -> [B, C].
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.scales = nn.Parameter(torch.ones(weight.shape[0], device=weight.device))

    def forward(self, h: Tensor) -> Tensor:
        return self.scales * F.linear(h, self.weight, self.bias)

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """(f_c w_c, f_c b_c): the same logits as an ordinary linear head."""
        f = self.scales.detach()[:, None]
        return self.weight * f, None if self.bias is None else self.bias * f[:, 0]


def _full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off inside (for the device types that have autocast)."""
    if device_type in ("cpu", "cuda", "xpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _check_dims(in_dim: int, num_classes: int) -> None:
    if in_dim < 1 or num_classes < 1:
        raise ConfigError(f"a head needs in_dim >= 1 and num_classes >= 1 (got {in_dim}, {num_classes})")
