"""ProCo: probabilistic contrastive learning (Du et al., TPAMI 2024), docs/methods.md section ProCo.

The normalised contrastive features of each class are modelled as a von Mises-Fisher distribution
vMF(mu_c, kappa_c) on S^{p-1}, estimated online from the first moment of the detached features. Drawing
infinitely many contrast samples from these distributions gives the closed-form logit

    l_c(z) = F(kappa~_c(z)) - F(kappa_c),   kappa~_c(z) = ||kappa_c mu_c + z/tau||,
    F(x) = log I_nu(x) - nu log x,          nu = p/2 - 1,

which equals log E_{z' ~ vMF(mu_c, kappa_c)} exp(z.z'/tau). The loss is the logit-adjusted CE of these
logits (log of the training prior, tau_LA = 1): -log[pi_y e^{l_y} / sum_j pi_j e^{l_j}].

State (persistent float32 buffers, so checkpoints resume them exactly): per-class feature sums and
counts of the previous epoch and of the current one, and the per-class random init directions. The
statistics used at any step are those of all features of the previous epoch plus the current epoch up
to and including the current update.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail import hostsync
from longtail.engine import distributed as dist
from longtail.losses._common import CountsLike, as_counts
from longtail.losses.contrastive import no_autocast
from longtail.losses.bessel import (BESSEL_METHODS, bessel_ratio, check_order, log_bessel_f,
                                    log_bessel_f_of_square)

__all__ = ["ProCoLoss", "ProCoOutput", "ProCoStats", "proco_kappa", "proco_logits", "kappa_tilde_sq",
           "init_directions", "NUMERATORS", "KAPPA_ESTIMATORS", "UPDATES", "BESSEL_METHODS", "KAPPA_MAX"]

NUMERATORS = ("logmeanexp", "mean")
KAPPA_ESTIMATORS = ("code", "banerjee")
UPDATES = ("per_view", "both_then_loss")
KAPPA_MAX = 1e5
INIT_RESULTANT = 0.9  # an unseen class's mean vector is 0.9 * (a random unit vector)


class ProCoStats(NamedTuple):
    """The per-class vMF estimate: mean direction mu [C, p], concentration kappa [C] and F(kappa) [C],
    all float64 and detached."""

    mu: Tensor
    kappa: Tensor
    f_kappa: Tensor


class ProCoOutput(NamedTuple):
    """loss = (loss_1 + loss_2)/2 (float32 scalars); logits [B, 2, C] float32 (detached)."""

    loss: Tensor
    loss_1: Tensor
    loss_2: Tensor
    logits: Tensor



def proco_kappa(resultant: Tensor, p: int, estimator: str = "code") -> Tensor:
    """Concentration from the mean resultant length R (float64).

    ``code``: kappa = p R / (1 - R^2), the official estimate; ``banerjee``: R (p - R^2) / (1 - R^2)
    (Banerjee et al. 2005, closer to the maximum-likelihood inverse of A_nu). Either way a value above
    1e5, below 0 (R > 1 by rounding) or not finite (R = 1) becomes 1e5.
    """
    if estimator not in KAPPA_ESTIMATORS:
        raise ValueError(f"kappa_estimator must be one of {KAPPA_ESTIMATORS} (got {estimator!r})")
    R = resultant.to(torch.float64)
    one_minus = 1.0 - R * R
    k = (p * R if estimator == "code" else R * (p - R * R)) / one_minus
    bad = (k > KAPPA_MAX) | (k < 0) | ~torch.isfinite(k)
    return torch.where(bad, torch.full_like(k, KAPPA_MAX), k)


def proco_logits(z: Tensor, mu: Tensor, kappa: Tensor, f_kappa: Tensor, temperature: float,
                 bessel: str = "debye") -> Tensor:
    """l_c(z) = F(||kappa_c mu_c + z/tau||) - F(kappa_c) for every anchor and class, float64 [B, C].

    kappa~^2 = kappa^2 + 2 kappa (z.mu)/tau + ||z||^2/tau^2 comes from one B x C matmul (no B x C x p
    tensor), clamped at 0 from below; ||z||^2 is taken from z itself. The gradient reaches z only.

    Shape:
        z [B, p], mu [C, p], kappa [C], f_kappa [C] -> [B, C] float64.
    """
    nu = z.shape[1] / 2.0 - 1.0
    q = kappa_tilde_sq(z, mu, kappa, temperature)
    return log_bessel_f_of_square(q, nu, bessel) - f_kappa.to(torch.float64)[None, :]


def kappa_tilde_sq(z: Tensor, mu: Tensor, kappa: Tensor, temperature: float) -> Tensor:
    """||kappa_c mu_c + z/tau||^2 = kappa^2 + 2 kappa (z.mu)/tau + ||z||^2/tau^2 by one matmul, float64,
    clamped at 0 from below. Shape: z [B, p], mu [C, p], kappa [C] -> [B, C]."""
    z64 = z.to(torch.float64)
    mu64, k = mu.to(torch.float64), kappa.to(torch.float64)
    dots = z64 @ mu64.t()  # [B, C]
    zz = (z64 * z64).sum(dim=1, keepdim=True)
    q = (k * k)[None, :] + (2.0 / temperature) * k[None, :] * dots + zz / (temperature * temperature)
    return q.clamp_min(0.0)


def init_directions(num_classes: int, dim: int, seed: int, index: int) -> Tensor:
    """Uniformly random unit vectors [C, p] (float32, CPU) from a generator seeded by (seed, index):
    the same on every rank and in every run with the same seed."""
    mix = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x5EED) % (2**63 - 1)
    g = torch.Generator().manual_seed(mix)
    u = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    return F.normalize(u, dim=1).to(torch.float32)


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices} (got {value!r}); {choices[0]} is the default")
    return value


class ProCoLoss(nn.Module):
    """The ProCo term with its online class statistics (docs/methods.md, ProCo).

    Args:
        counts: training images per class n_c (each >= 1); the prior of the logit adjustment.
        dim: the projection size p (>= 32).
        temperature: tau > 0 (0.1 on CIFAR, 0.07 on ImageNet-LT and iNat).
        numerator: ``logmeanexp`` (the official loss, LA-CE of the logits) or ``mean`` (the limit of
            SupCon's mean-of-logs form: the target's term is log pi_y + A(kappa_y) mu_y.z/tau).
        kappa_estimator: ``code`` (p R/(1 - R^2)) or ``banerjee``.
        bessel: ``debye`` (accurate, default) or ``miller`` (the official routine, parity only).
        update: ``per_view`` (view 1: update, then its loss; then view 2) or ``both_then_loss``.
        seed: the run seed of the init directions (reset index = the epoch of :meth:`start_epoch`).

    State (persistent float32 buffers): ``sum_prev``, ``sum_cur`` [C, p], ``count_prev``, ``count_cur``
    [C], ``init_dir`` [C, p]. Every update adds the whole (global) batch: under DDP the per-class sums
    and counts are all-reduced, so every rank holds the same state.

    Shape:
        forward(z [B, 2, p] L2-normalised (views 1 and 2), labels [B] int64) -> ProCoOutput.
    """

    def __init__(self, counts: CountsLike, dim: int, temperature: float = 0.1, numerator: str = "logmeanexp",
                 kappa_estimator: str = "code", bessel: str = "debye", update: str = "per_view",
                 seed: int = 0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 32:
            raise ValueError(f"dim (the projection size p) must be an integer >= 32 (got {dim!r}); "
                             f"ProCo uses 128 on CIFAR and 1024 on ImageNet-LT and iNat")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
                or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (got {temperature!r}); ProCo uses 0.1 or 0.07")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer (got {seed!r})")
        self.numerator = _check_choice(numerator, "numerator", NUMERATORS)
        self.kappa_estimator = _check_choice(kappa_estimator, "kappa_estimator", KAPPA_ESTIMATORS)
        self.bessel = _check_choice(bessel, "bessel", BESSEL_METHODS)
        self.update_order = _check_choice(update, "update", UPDATES)
        self.dim, self.temperature, self.seed = int(dim), float(temperature), int(seed)
        self.nu = check_order(self.dim / 2.0 - 1.0)
        n = as_counts(counts)
        self.num_classes = C = n.shape[0]
        self.register_buffer("log_prior", (n / n.sum()).log().to(torch.float32), persistent=False)
        self.register_buffer("sum_prev", torch.zeros(C, self.dim))
        self.register_buffer("count_prev", torch.zeros(C))
        self.register_buffer("sum_cur", torch.zeros(C, self.dim))
        self.register_buffer("count_cur", torch.zeros(C))
        self.register_buffer("init_dir", init_directions(C, self.dim, self.seed, 0))

    # ------------------------------------------------------------------------------------------ state

    @torch.no_grad()
    def start_epoch(self, index: int) -> None:
        """The epoch roll: previous <- current, current <- 0, new init directions for reset ``index``."""
        self.sum_prev = self.sum_cur.clone()
        self.count_prev = self.count_cur.clone()
        self.sum_cur = torch.zeros_like(self.sum_cur)
        self.count_cur = torch.zeros_like(self.count_cur)
        self.init_dir = init_directions(self.num_classes, self.dim, self.seed, index).to(self.init_dir.device)

    @torch.no_grad()
    def update(self, z: Tensor, labels: Tensor) -> None:
        """Add the detached features ``z`` [n, p] of classes ``labels`` [n] to the current accumulator
        (all-reduced over the ranks: one call per rank, with the same order of calls on every rank)."""
        C, p = self.num_classes, self.dim
        both = torch.zeros(C, p + 1, dtype=torch.float32, device=z.device)
        both[:, :p].index_add_(0, labels, z.detach().to(torch.float32))
        both[:, p].index_add_(0, labels, torch.ones(labels.shape[0], dtype=torch.float32, device=z.device))
        dist.all_reduce_sum_(both)  # one collective: per-class sums and counts of the global batch
        # out of place: autograd may hold the old tensors for this step's backward
        self.sum_cur = self.sum_cur + both[:, :p]
        self.count_cur = self.count_cur + both[:, p]

    @torch.no_grad()
    def statistics(self) -> ProCoStats:
        """mu, kappa and F(kappa) of every class from the current window (float64, detached)."""
        S = self.sum_prev.to(torch.float64) + self.sum_cur.to(torch.float64)
        N = self.count_prev.to(torch.float64) + self.count_cur.to(torch.float64)
        seen = N > 0
        m = torch.where(seen[:, None], S / N.clamp_min(1.0)[:, None],
                        INIT_RESULTANT * self.init_dir.to(torch.float64))
        R = m.norm(dim=1)
        mu = m / R.clamp_min(1e-300)[:, None]
        kappa = proco_kappa(R, self.dim, self.kappa_estimator)
        return ProCoStats(mu, kappa, log_bessel_f(kappa, self.nu, self.bessel))

    # ------------------------------------------------------------------------------------------ loss

    def logits(self, z: Tensor, stats: Optional[ProCoStats] = None) -> Tensor:
        """The ProCo logits [B, C] (float64) of anchors z [B, p] under ``stats`` (default: the current)."""
        stats = self.statistics() if stats is None else stats
        return proco_logits(z, stats.mu, stats.kappa, stats.f_kappa, self.temperature, self.bessel)

    def view_loss(self, logits: Tensor, labels: Tensor, stats: ProCoStats, z: Tensor) -> Tensor:
        """LA-CE of float64 ProCo logits (cast to float32 first), or the ``mean`` numerator's form."""
        adjusted = logits.to(torch.float32) + self.log_prior.to(logits.device)
        if self.numerator == "logmeanexp":
            return F.cross_entropy(adjusted, labels)
        # the limit of the mean of logs over the positives: log pi_y + A(kappa_y) mu_y.z/tau
        k_y = stats.kappa[labels]
        a_y = bessel_ratio(k_y, self.nu, self.bessel)
        target = (a_y * (z.to(torch.float64) * stats.mu[labels]).sum(dim=1) / self.temperature).to(torch.float32)
        target = target + self.log_prior.to(logits.device)[labels]
        return (torch.logsumexp(adjusted, dim=1) - target).mean()

    def forward(self, z: Tensor, labels: Tensor) -> ProCoOutput:
        """Update the statistics with both views (in the configured order) and return the two losses.

        ``z`` [B, 2, p] and ``labels`` [B] are this rank's share: the statistics take the global batch
        (all-reduced), the losses average over the local anchors, so DDP's gradient average equals the
        single-process mean over the global batch when the ranks' batches are equal.
        """
        self._check_inputs(z, labels)
        labels = labels.long()
        with no_autocast(z.device):
            z = z.float()
            zs = (z[:, 0], z[:, 1])
            losses, logits = [], []
            if self.update_order == "both_then_loss":
                self.update(zs[0], labels)
                self.update(zs[1], labels)
                stats = self.statistics()
            for zk in zs:
                if self.update_order == "per_view":
                    self.update(zk, labels)
                    stats = self.statistics()
                lk = self.logits(zk, stats)
                losses.append(self.view_loss(lk, labels, stats, zk))
                logits.append(lk.detach().to(torch.float32))
        return ProCoOutput(0.5 * (losses[0] + losses[1]), losses[0], losses[1], torch.stack(logits, dim=1))

    def _check_inputs(self, z: Tensor, labels: Tensor) -> None:
        if z.dim() != 3 or z.shape[1] != 2 or z.shape[2] != self.dim:
            raise ValueError(f"z must be [B, 2, p] = [B, 2, {self.dim}] (views 1 and 2 of each image; got shape "
                             f"{tuple(z.shape)})")
        if not z.dtype.is_floating_point:
            raise ValueError(f"z must be floating point (got {z.dtype})")
        if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
            raise ValueError(f"labels must be [B] = [{z.shape[0]}] (got shape {tuple(labels.shape)})")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices (got dtype {labels.dtype})")
        # the range is checked where reading is free (CPU); on a GPU index_add_'s bounds check catches it
        if labels.numel() and hostsync.reads_are_free(labels) and \
                (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}) (got min "
                             f"{int(labels.min())}, max {int(labels.max())})")

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, temperature={self.temperature}, "
                f"numerator={self.numerator!r}, kappa_estimator={self.kappa_estimator!r}, bessel={self.bessel!r}, "
                f"update={self.update_order!r}")

