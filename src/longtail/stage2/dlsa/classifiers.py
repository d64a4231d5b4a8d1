"""The cluster-aided and regular classifiers and their BSM training (docs/methods.md §4.6)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from longtail.stage2.dlsa.flow import _uniform_init


def _linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    _uniform_init(lin.weight, lin.bias, generator)
    return lin


class ClusterAidedClassifier(nn.Module):
    """CAC: s = L_x(x) + L_zp([z; p]) with p the cluster prior Π[κ(x)] (one affine map on [x; z; p]).

    Shape:
        x [B, d], z [B, d_z], p [B, C] -> logits [B, C].
    """

    def __init__(self, dim: int, num_classes: int, z_dim: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        generator = generator or torch.Generator().manual_seed(0)
        self.lin_x = _linear(dim, num_classes, generator)
        self.lin_zp = _linear((z_dim or dim) + num_classes, num_classes, generator)

    def forward(self, x: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.lin_x(x) + self.lin_zp(torch.cat([z, p], dim=1))


class RegularClassifier(nn.Module):
    """s = L_x(x) + L_z(z), with z = x in DLSA (parity).

    Shape:
        x [B, d], z [B, d] -> logits [B, C].
    """

    def __init__(self, dim: int, num_classes: int, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        generator = generator or torch.Generator().manual_seed(0)
        self.lin_x = _linear(dim, num_classes, generator)
        self.lin_z = _linear(dim, num_classes, generator)

    def forward(self, x: torch.Tensor, z: torch.Tensor, p: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.lin_x(x) + self.lin_z(z)


def bsm_offsets(counts: torch.Tensor) -> torch.Tensor:
    """Balanced-softmax logit offsets log(n + 1e-6) (an absent class gets about −13.8). Shape: [C]."""
    return torch.log(counts.double() + 1e-6).float()


@dataclass
class ClassifierInputs:
    """The inputs of one classifier for one split.

    Attributes:
        x: features [M, d] (host); z: second input [M, d_z] or None for z = x; cluster: int32 [M]
        cluster ids into ``prior`` or None (regular classifier); labels: [M] int64.
    """

    x: torch.Tensor
    labels: torch.Tensor
    z: Optional[torch.Tensor] = None
    cluster: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, idx: torch.Tensor, prior: Optional[torch.Tensor], device: torch.device):
        x = self.x[idx].to(device=device, dtype=torch.float32)
        z = x if self.z is None else self.z[idx].to(device=device, dtype=torch.float32)
        p = None
        if self.cluster is not None:
            assert prior is not None
            p = prior.index_select(0, self.cluster[idx].long().to(prior.device))
        return x, z, p


@torch.no_grad()
def predict(model: nn.Module, data: ClassifierInputs, prior: Optional[torch.Tensor], device: torch.device,
            batch_size: int = 4096) -> torch.Tensor:
    """Logits (float32, host) for every sample of ``data``, in batches. Shape: -> [M, C]."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        out.append(model(*data.batch(idx, prior, device)).float().cpu())
    num_classes = model.lin_x.out_features
    return torch.cat(out) if out else torch.empty(0, num_classes)


def train_classifier(model: nn.Module, train: ClassifierInputs, bsm_counts: torch.Tensor, *, epochs: int,
                     lr: float, batch_size: int, eval_every: int, device: torch.device, seed: int,
                     prior: Optional[torch.Tensor] = None, val: Optional[ClassifierInputs] = None,
                     log: Optional[Callable[[dict], None]] = None) -> tuple[nn.Module, dict]:
    """Train with BSM, CE(s + log(n + 1e-6), y), plain SGD (momentum 0, no wd, constant lr).

    Selection: with a non-empty ``val`` subset, the epoch (evaluated every ``eval_every`` epochs and at
    the last) with the best val top-1 (earliest on ties); otherwise the last epoch. Never the test set.

    Returns:
        the model (selected weights, eval mode) and {"selection": "best_val"|"last", "epoch", "val_top1"}.
    """
    model.to(device)
    if prior is not None:
        prior = prior.to(device)
    gen = torch.Generator().manual_seed(seed)
    offsets = bsm_offsets(bsm_counts).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    use_val = val is not None and len(val) > 0
    best = {"selection": "best_val" if use_val else "last", "epoch": epochs, "val_top1": None}
    best_state = None
    n = len(train)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            x, z, p = train.batch(idx, prior, device)
            y = train.labels[idx].to(device)
            loss = nn.functional.cross_entropy(model(x, z, p).float() + offsets, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "loss": total / max(steps, 1)}
        if use_val and (epoch % eval_every == 0 or epoch == epochs):
            acc = float((predict(model, val, prior, device).argmax(1) == val.labels).double().mean() * 100)
            row["val_top1"] = acc
            if best["val_top1"] is None or acc > best["val_top1"]:
                best.update(epoch=epoch, val_top1=acc)
                best_state = copy.deepcopy(model.state_dict())
        if log is not None:
            log(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, best
