"""The parts BBL (our reconstruction, docs/methods.md §3) is composed of: its sets, its class weights, and
the variants of its global and local terms, as plain functions of one contrast set.

Rows are anchors (image-major: row n·2 + v is view v of image n, as in every contrastive loss of the
toolbox, :mod:`longtail.losses.contrastive`); columns are the contrast entries, in the order
``[2B batch embeddings | Q queue entries (R4) | K centres]``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor

from longtail.losses._common import CountsLike, as_counts

__all__ = ["BBLSets", "bbl_sets", "bbl_class_weights", "global_contrast", "global_alignment", "local_balance"]


class BBLSets(NamedTuple):
    """The §3.3–3.4 sets as boolean masks [R, M] over the contrast entries."""

    global_pos: Tensor  # G⁺: other view + own centre
    global_contrast: Tensor  # G: other view + every centre
    local_pos: Tensor  # L⁺: both views of every other image of the anchor's class
    local_contrast: Tensor  # ∪_c S_c(i): every batch embedding of another image


def check_number(value: Any, name: str, low: float, strict: bool, hint: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low} (got {value!r}); {hint}")
    return float(value)


def bbl_class_weights(counts: CountsLike, gamma: float) -> Tensor:
    """Global class weight Ω(c) = n_c^(−γ) / w̄ with w̄ = (1/N)·Σ_c n_c·n_c^(−γ) (§3.2), float64.

    Σ_c n_c·Ω(c) = N for every γ, so the expected anchor weight over an epoch is 1; γ = 0 gives Ω ≡ 1,
    γ = 1 gives every class the same total weight N/C.

    Shape:
        counts [C] (each > 0) -> [C] float64 on the CPU.
    """
    n = as_counts(counts)
    g = check_number(gamma, "gamma", 0.0, False, "0 switches the reweighting off, 0.5 is the default")
    raw = n.pow(-g)
    return raw * n.sum() / (n * raw).sum()


def entry_kinds(n_batch: int, n_queue: int, n_centres: int, device) -> tuple[Tensor, Tensor]:
    """(is_batch [M], is_centre [M]) for the column order [batch | queue | centres]."""
    from longtail import hostsync

    def build(d):
        kind = torch.cat([torch.zeros(n_batch, dtype=torch.int8, device=d),
                          torch.ones(n_queue, dtype=torch.int8, device=d),
                          torch.full((n_centres,), 2, dtype=torch.int8, device=d)])
        return torch.stack([kind == 0, kind == 2])

    both = hostsync.cached(("bbl_entry_kinds", n_batch, n_queue, n_centres), device, build)
    return both[0], both[1]


def bbl_sets(labels: Tensor, num_classes: int, rows: tuple[int, int] | None = None, *,
             entry_labels: Tensor | None = None, entry_images: Tensor | None = None, n_queue: int = 0) -> BBLSets:
    """The BBL sets of the anchors ``rows`` (default: all 2B, image-major) of a batch with ``labels``.

    Their unions are BCL's sets (§2.3): G⁺ ∪ L⁺ = P(i) and G ∪ (∪_c S_c) = A \\\\ {i}; the two parts are
    disjoint, which is the decoupling. Queue entries (R4) belong to none of these sets (the local term
    adds them to the class negatives itself). ``entry_labels``/``entry_images`` describe the columns
    (default: the 2B batch embeddings, then the K centres).

    Shape:
        labels [B] int64 -> four bool [R, M] masks, M = 2B + Q + K.
    """
    B, K = labels.shape[0], num_classes
    dev = labels.device
    if entry_labels is None:
        k = torch.arange(K, device=dev)
        entry_labels = torch.cat([labels.repeat_interleave(2), k])
        entry_images = torch.cat([torch.arange(B, device=dev).repeat_interleave(2), torch.full_like(k, -1)])
    r0, r1 = rows if rows is not None else (0, 2 * B)
    is_batch, is_centre = entry_kinds(2 * B, n_queue, K, dev)
    cols = torch.arange(entry_labels.shape[0], device=dev)
    is_self = cols[None, :] == torch.arange(r0, r1, device=dev)[:, None]
    same_img = entry_images[r0:r1, None] == entry_images[None, :]
    same_cls = entry_labels[r0:r1, None] == entry_labels[None, :]
    other_view = same_img & ~is_self
    other_img = is_batch & ~same_img
    return BBLSets(global_pos=other_view | (is_centre & same_cls), global_contrast=other_view | is_centre,
                   local_pos=other_img & same_cls, local_contrast=other_img)


def global_contrast(S: Tensor, sets: BBLSets, omega_rows: Tensor) -> Tensor:
    """R1/R3/R4: ℓ_GB = lse_G − ½ Σ_{G⁺} (|G⁺| = 2), weighted by Ω(y), summed over the rows, / R."""
    lse = S.masked_fill(~sets.global_contrast, -math.inf).logsumexp(1)
    ell = lse - 0.5 * (S * sets.global_pos).sum(1)  # S is finite: a product is the masked sum
    return (omega_rows * ell).sum() / S.shape[0]


def global_alignment(S: Tensor, sets: BBLSets, omega_rows: Tensor, batch_positives: bool = False) -> Tensor:
    """R2: pure alignment, −mean_{G⁺} (plus L⁺ with ``batch_positives``), weighted by Ω(y), / R."""
    pos = sets.global_pos | sets.local_pos if batch_positives else sets.global_pos
    ell = -(S * pos).sum(1) / pos.sum(1)
    return (omega_rows * ell).sum() / S.shape[0]


def local_balance(S: Tensor, sets: BBLSets, Y: Tensor, yr: Tensor, n_emb: Tensor, *, repulsion_only: bool,
                  lone_repulsion: bool, queue: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """ℓ_LB = log D_loc − mean_{L⁺} z·p/τ (R1/R3/R4), or log D_loc alone (R2, ``repulsion_only``), averaged
    over the qualifying anchors of the WHOLE batch (see below).

    D_loc sums, over the negative classes c and the own class, mean_{k∈S_c} exp(z·k/τ); S_c is class c's
    batch embeddings (the anchor's two views excluded from its own class) plus, with ``queue``
    ``(labels [Q], filled [Q] bool, counts per class [K])``, class c's queue entries (own-class entries
    unused). Rows with an empty denominator get a finite dummy so that no NaN gradient can leak.
    """
    nb = Y.shape[0]
    n_queue = 0 if queue is None else queue[0].shape[0]
    Sb = S[:, :nb]
    avail = n_emb if queue is None else n_emb + queue[2]  # |S_c| of a negative class: batch (+ queue)
    own = yr[:, None] == Y[None, :]
    # |S_y(i)| excludes the anchor's two views; own-class queue entries are never used
    size = torch.where(own, (n_emb[yr] - 2)[:, None], avail[Y][None, :]).to(S.dtype)  # log of ints is fp32
    mask = sets.local_contrast[:, :nb] & ~own if repulsion_only else sets.local_contrast[:, :nb]
    logits, keep = Sb - size.clamp_min(1).log(), mask
    if queue is not None:
        q_labels, filled, _ = queue
        q_mask = filled[None, :] & (q_labels[None, :] != yr[:, None])
        q_logits = S[:, nb:nb + n_queue] - avail[q_labels].to(S.dtype).clamp_min(1).log()
        logits, keep = torch.cat([logits, q_logits], 1), torch.cat([mask, q_mask], 1)
    has_any = keep.any(1)
    log_d = torch.where(has_any[:, None], logits.masked_fill(~keep, -math.inf), 0.0).logsumexp(1)
    present = avail > 0
    n_neg = (present.sum() - present[yr].long()).to(S.dtype)  # |Y⁻|
    if repulsion_only:
        ell, use = log_d, n_neg > 0
    else:
        lpos = sets.local_pos[:, :nb]
        n_pos = lpos.sum(1)
        ell = log_d - (Sb * lpos).sum(1) / n_pos.clamp_min(1)
        use = n_pos > 0
        if lone_repulsion:  # lone anchors: S_y(i) = ∅, so log_d covers Y⁻ only
            lone = ~use & (n_neg > 0)
            ell = torch.where(lone, log_d - n_neg.clamp_min(1).log(), ell)
            use = use | lone
    # L_LB is the mean over the qualifying anchors of the WHOLE batch. With a local_range (this rank's
    # rows under DDP) the sum over its rows is divided by that count times the rows' share, so the
    # share-weighted average over ranges (DDP's plain mean over equal shares) is exactly L_LB.
    # Whether an anchor qualifies depends on counts only: |L⁺| = n_emb[y] − 2 and |Y⁻|.
    n_neg_all = present.sum() - present[Y].long()
    if repulsion_only:
        use_all = n_neg_all > 0
    else:
        use_all = n_emb[Y] > 2
        if lone_repulsion:
            use_all = use_all | (n_neg_all > 0)
    share = S.shape[0] / nb
    denom = use_all.sum().to(S.dtype) * share
    # ell is finite on every row (empty denominators got a dummy): a product is the masked sum
    return (ell * use).sum() / denom.clamp_min(share)
