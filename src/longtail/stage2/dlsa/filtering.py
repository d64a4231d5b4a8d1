"""Likelihood filtering, the cluster prior table and cluster statistics (docs/methods.md §4.4, §4.5)."""

from __future__ import annotations

import math

import torch


def llh_threshold(ll_active: torch.Tensor, rho: float) -> float:
    """The filtering threshold: ascending-sorted ll[⌊|A|·(1 − ρ)⌋].

    Samples with ll ≥ thr are filtered. ρ = 0 gives +inf (filter nothing; the original indexes past
    the end there) and ρ = 1 gives −inf (filter everything).

    Shape:
        ll_active: [|A|] log-likelihoods of the active train samples.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1] (got {rho})")
    n = ll_active.numel()
    idx = math.floor(n * (1.0 - rho))
    if n == 0 or idx >= n:
        return math.inf
    if rho >= 1.0:
        return -math.inf
    return float(torch.sort(ll_active.double()).values[idx])


def prior_table(cluster: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int) -> torch.Tensor:
    """Π[k, c] = share of label c among the samples assigned to cluster k; empty clusters: zero rows.

    Built from one bincount over k·C + c, so its cost is O(N + K·C) and it never forms N×C.

    Shape:
        cluster: [N] int, labels: [N] int -> [K, C] float32.
    """
    flat = cluster.long() * num_classes + labels.long()
    counts = torch.bincount(flat, minlength=num_clusters * num_classes).view(num_clusters, num_classes)
    sizes = counts.sum(1, keepdim=True)
    return (counts.double() / sizes.clamp_min(1)).float()


def gather_prior(table: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
    """The sample priors p(x) = Π[κ(x)] for one batch. Shape: table [K, C], cluster [B] -> [B, C]."""
    return table.index_select(0, cluster.long().to(table.device))


def cluster_stats(cluster: torch.Tensor, labels: torch.Tensor, num_clusters: int, num_classes: int,
                  purity_threshold: float = 0.7, min_size: int = 10) -> dict:
    """Sizes and purities (majority-class shares) of the clusters.

    Returns:
        ``good`` (clusters with purity > purity_threshold and size > min_size), ``max_size``,
        ``non_empty``, ``mean_purity`` (over non-empty clusters; None if none), and ``sizes`` /
        ``purity`` tensors of shape [K].
    """
    flat = cluster.long() * num_classes + labels.long()
    counts = torch.bincount(flat, minlength=num_clusters * num_classes).view(num_clusters, num_classes)
    sizes = counts.sum(1)
    purity = counts.max(1).values.double() / sizes.clamp_min(1)
    nonempty = sizes > 0
    good = int(((purity > purity_threshold) & (sizes > min_size)).sum())
    return {
        "good": good,
        "max_size": int(sizes.max()) if sizes.numel() else 0,
        "non_empty": int(nonempty.sum()),
        "mean_purity": float(purity[nonempty].mean()) if bool(nonempty.any()) else None,
        "sizes": sizes,
        "purity": purity,
    }
