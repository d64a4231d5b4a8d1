"""Training the Gaussian-mixture flow on the active train samples (docs/methods.md §4.4)."""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch

from longtail.stage2.dlsa.config import DLSAConfig
from longtail.stage2.dlsa.filtering import cluster_stats
from longtail.stage2.dlsa.mixture import GMFlow, log_posterior, log_prob, score


class PairSampler:
    """Draws (x⁺, x⁻) index pairs: classes a ≠ b uniform over the classes present, then one
    uniformly random sample of each.

    Args:
        labels: labels of the candidate samples (e.g. the active train samples), [M] int.
        generator: a seeded CPU generator (the original uses NumPy's global RNG).
    """

    def __init__(self, labels: torch.Tensor, generator: torch.Generator) -> None:
        labels = labels.long().cpu()
        self.classes, counts = torch.unique(labels, return_counts=True)
        if self.classes.numel() < 2:
            raise ValueError(f"the flow needs samples of at least 2 classes to form pairs "
                             f"(got {self.classes.numel()}); lower max_depth or llh_proportion")
        self.sorted_idx = torch.argsort(labels, stable=True)  # positions grouped by class
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.generator = generator

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n pairs. Returns (pos, neg, class index of pos in ``self.classes``), each [n] int64."""
        p, g = self.classes.numel(), self.generator
        a = torch.randint(p, (n,), generator=g)
        b = torch.randint(p - 1, (n,), generator=g)
        b = b + (b >= a).long()  # uniform over the p − 1 classes other than a
        pos = self.offsets[a] + (torch.rand(n, generator=g, dtype=torch.float64) * self.counts[a]).long()
        neg = self.offsets[b] + (torch.rand(n, generator=g, dtype=torch.float64) * self.counts[b]).long()
        return self.sorted_idx[pos], self.sorted_idx[neg], a


def class_weights(labels: torch.Tensor, num_classes: int, q: float = 2.0) -> torch.Tensor:
    """ω_c = (n_max/n_c)^q / Σ_c' (n_max/n_c')^q over the classes present; 0 for absent classes.

    The weights sum to 1, so the effective likelihood weight is about λ_lh / C (parity).

    Shape:
        labels: [M] int -> [C] float32.
    """
    n = torch.bincount(labels.long().cpu(), minlength=num_classes).double()
    present = n > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = (n.max() / n[present]) ** q
    return (w / w.sum()).float()


class BalanceEMA:
    """The bias-corrected EMA p̄ of the mean posterior and L_bal = Σ_k p̄_k log p̄_k + log K.

    r_t = mean q(·|x⁺) + 1e-7; e_t = m·sg(e_{t−1}) + (1 − m)·r_t with e_0 = 0; p̄ = e_t / (1 − m^t).
    """

    def __init__(self, momentum: float = 0.7) -> None:
        self.momentum = momentum
        self.ema: Optional[torch.Tensor] = None
        self.step = 0

    def __call__(self, post_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: post_pos [B, K] (probabilities) -> (L_bal scalar without λ, p̄ [K])."""
        m = self.momentum
        self.step += 1
        r = post_pos.mean(0) + 1e-7
        prev = torch.zeros_like(r) if self.ema is None else self.ema.detach()
        e = m * prev + (1 - m) * r
        self.ema = e.detach()
        pbar = e / (1 - m ** self.step)
        return (pbar * torch.log(pbar)).sum() + math.log(pbar.numel()), pbar


def purity_loss(log_q_pos: torch.Tensor, log_q_neg: torch.Tensor) -> torch.Tensor:
    """mean_batch Σ_k sg(q(k|x⁺))·log q(k|x⁻) (without λ): gradient flows only through x⁻.

    Shape:
        log_q_pos, log_q_neg: [B, K] log posteriors -> scalar.
    """
    return (log_q_pos.detach().exp() * log_q_neg).sum(1).mean()


def train_flow(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: DLSAConfig,
               device: torch.device, seed: int,
               log: Optional[Callable[[dict], None]] = None) -> tuple[GMFlow, dict]:
    """Train a GMFlow on ``features`` (the active train samples) and keep the selected epoch.

    Selection uses training labels only: after each epoch the samples are assigned to clusters and
    the epoch with the most clusters of purity > ``purity_threshold`` and size > ``min_cluster_size``
    wins, among epochs whose largest cluster has < ``max_cluster_size`` samples. If no epoch meets
    the size condition, the last epoch is kept [ours; the original then keeps the initial state].

    Shape:
        features: [M, d] float (host or device), labels: [M] int.

    Returns:
        the model in eval mode and {"epoch", "good", "max_size"} of the kept epoch (epoch 0 = untrained).
    """
    gen = torch.Generator().manual_seed(seed)
    model = GMFlow(features.shape[1], cfg.num_clusters, cfg.flow_hidden_layers, cfg.centre_std, gen).to(device)
    labels = labels.long().cpu()
    sampler = PairSampler(labels, gen)
    weights = class_weights(labels, num_classes, cfg.weight_power).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.flow_lr, momentum=0.0, weight_decay=0.0)
    balance = BalanceEMA(cfg.ema_momentum)
    m = labels.numel()
    best: dict = {"epoch": 0, "good": -1, "max_size": None}
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.flow_epochs + 1):
        model.train()
        pos, neg, _ = sampler.sample(m)
        sums = {"loss": 0.0, "lh": 0.0, "pur": 0.0, "bal": 0.0}
        steps = 0
        for start in range(0, m, cfg.flow_batch):
            ip, ineg = pos[start:start + cfg.flow_batch], neg[start:start + cfg.flow_batch]
            x = torch.cat([features[ip], features[ineg]]).to(device=device, dtype=torch.float32)
            # One pass over [x⁺; x⁻]: both halves share one set of BN batch statistics [ours].
            lpk = model(x)
            b = ip.numel()
            lpk_pos, lpk_neg = lpk[:b], lpk[b:]
            w = weights[labels[ip].to(device)]
            l_lh = -cfg.lambda_lh * (w * log_prob(lpk_pos)).mean()
            lq_pos, lq_neg = log_posterior(lpk_pos), log_posterior(lpk_neg)
            l_pur = cfg.lambda_pur * purity_loss(lq_pos, lq_neg)
            l_bal, _ = balance(lq_pos.exp())
            l_bal = cfg.lambda_bal * l_bal
            loss = l_lh + l_pur + l_bal
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("lh", l_lh), ("pur", l_pur), ("bal", l_bal)):
                sums[k] += float(v.detach())
            steps += 1
        _, cluster = score(model, features, cfg.chunk_size, device)
        st = cluster_stats(cluster, labels, cfg.num_clusters, num_classes, cfg.purity_threshold,
                           cfg.min_cluster_size)
        row = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in sums.items()},
               "good_clusters": st["good"], "max_cluster": st["max_size"]}
        if not all(math.isfinite(row[k]) for k in sums):
            from longtail.errors import NonFiniteLossError
            raise NonFiniteLossError(f"the DLSA flow loss became non-finite at epoch {epoch} ({row}); "
                                     f"lower flow_lr (now {cfg.flow_lr})")
        if log is not None:
            log(row)
        eligible = st["max_size"] < cfg.max_cluster_size
        if (eligible and st["good"] > best["good"]) or (best["good"] < 0 and epoch == cfg.flow_epochs):
            best = {"epoch": epoch, "good": st["good"], "max_size": st["max_size"]}
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return model, best
