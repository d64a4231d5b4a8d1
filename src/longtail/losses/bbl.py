"""BBL (reconstruction): a bi-granularity balance loss, METHODS.md §3 and docs/methods/bbl.md.

RECONSTRUCTION NOTICE. Only the abstract of Ren, Li, Wu, Fu, "Bi-granularity Balance Learning"
(CVIU 261:104469, 2025) could be read. Every formula here is OUR reconstruction of the idea it
describes (decouple the contrastive attraction/repulsion into a global and a local balance term); it
is not the authors' loss, and numbers obtained with it are never a reproduction of the paper.

Anchor rows are the 2B contrastive embeddings, ordered view-major: row a·B + i is view a of image i.
Targets are T = (the 2B batch embeddings, the K centres). Per anchor z with label y (§3.3–3.4):

- global (R1): G⁺ = {other view, μ_y}, G = {other view} ∪ {μ_0 … μ_{K−1}},
  ℓ_GB = −½ Σ_{p∈G⁺} [z·p/τ − logsumexp_{k∈G} z·k/τ], L_GB = (1/2B) Σ Ω(y)·ℓ_GB;
- local (R1): L⁺ = both views of the other same-class images, S_c = class-c batch embeddings minus the
  anchor's own two views, log D_loc = logsumexp_{c, k∈S_c} [z·k/τ − log|S_c|],
  ℓ_LB = log D_loc − mean_{p∈L⁺} z·p/τ, averaged over the anchors with L⁺ ≠ ∅ (0 if none).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail import hostsync
from longtail.losses._common import CountsLike, as_counts, class_counts

GLOBAL_MODES = ("reweight", "logit_adjust")
VARIANTS = ("r1", "r2", "r3", "r4")
_LAZY_STATE = ("memory", "epoch_sum", "queue")  # state buffers whose last dim (D) is known at the 1st forward


class BBLOutput(NamedTuple):
    """total = global_term + λ·local_term (float32 or float64 scalars; α, β are the method's)."""

    total: Tensor
    global_term: Tensor
    local_term: Tensor


class BBLSets(NamedTuple):
    """The §3.3–3.4 sets as boolean masks [R, 2B + K] over T = (2B batch embeddings, K centres)."""

    global_pos: Tensor  # G⁺: other view + own centre
    global_contrast: Tensor  # G: other view + every centre
    local_pos: Tensor  # L⁺: both views of every other image of the anchor's class
    local_contrast: Tensor  # ∪_c S_c(i): every batch embedding of another image


def _check_number(value: Any, name: str, low: float, strict: bool, hint: str) -> float:
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
    g = _check_number(gamma, "gamma", 0.0, False, "0 switches the reweighting off, 0.5 is the default")
    raw = n.pow(-g)
    return raw * n.sum() / (n * raw).sum()


def _batch_patterns(B: int, K: int, device: torch.device) -> dict:
    """The label-free masks of a batch of B images (2B view-major anchors) and K centres, built once."""
    def build(name: str, dev: torch.device) -> Tensor:
        img = torch.arange(B, device=dev).repeat(2)
        same_img = img[:, None] == img[None, :]
        other_view = same_img & ~torch.eye(2 * B, dtype=torch.bool, device=dev)
        no_centre = torch.zeros(2 * B, K, dtype=torch.bool, device=dev)
        return {"same_img": same_img, "not_same_img": ~same_img,
                "global_contrast": torch.cat([other_view, ~no_centre], 1),
                "local_contrast": torch.cat([~same_img, no_centre], 1),
                "other_view": other_view, "no_centre": no_centre}[name]

    names = ("same_img", "not_same_img", "global_contrast", "local_contrast", "other_view", "no_centre")
    return {n: hostsync.cached(("bbl_patterns", n, B, K), device, lambda d, n=n: build(n, d)) for n in names}


def bbl_sets(labels: Tensor, num_classes: int, rows: Optional[Tensor] = None) -> BBLSets:
    """Build the BBL sets for anchor rows (default: all 2B) of a batch with ``labels``.

    Their unions are BCL's sets (§2.3): G⁺ ∪ L⁺ = P(i) and G ∪ (∪_c S_c) = A \\ {i}; the two parts
    are disjoint, which is the decoupling. The label-free masks are built once per batch size.

    Shape:
        labels [B] int64, rows [R] int64 indices into the 2B view-major anchors -> four bool [R, 2B + K].
    """
    B, dev, K = labels.shape[0], labels.device, num_classes
    Y = labels.repeat(2)
    pat = _batch_patterns(B, K, dev)
    classes = hostsync.cached(("arange", K), dev, lambda d: torch.arange(K, device=d))
    if rows is None:  # every anchor: the batch patterns as they are
        yr = Y
        same_img, not_same_img, other_view = pat["same_img"], pat["not_same_img"], pat["other_view"]
        no_centre, global_contrast, local_contrast = pat["no_centre"], pat["global_contrast"], pat["local_contrast"]
    else:
        yr = Y[rows]
        same_img, other_view, no_centre = pat["same_img"][rows], pat["other_view"][rows], pat["no_centre"][rows]
        not_same_img = ~same_img
        global_contrast, local_contrast = pat["global_contrast"][rows], pat["local_contrast"][rows]
    same_cls = yr[:, None] == Y[None, :]
    own_centre = yr[:, None] == classes[None, :]
    return BBLSets(
        global_pos=torch.cat([other_view, own_centre], 1),
        global_contrast=global_contrast,
        local_pos=torch.cat([same_cls & not_same_img, no_centre], 1),
        local_contrast=local_contrast,
    )


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    # The similarity matmuls must run in float32 even inside a bf16/fp16 autocast region (§0.2).
    if device.type in ("cpu", "cuda", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class BBLLoss(nn.Module):
    """BBL (reconstruction) loss: L_GB + λ·L_LB with the variants R1–R4 of METHODS.md §3.3–3.6.

    Args:
        counts: training images per class n_c (each ≥ 1), from the full training split.
        temperature: τ > 0.
        gamma: exponent γ ≥ 0 of Ω (``reweight`` mode only; ignored by ``logit_adjust``).
        lam: weight λ ≥ 0 of the local term.
        global_mode: ``"reweight"`` (Ω(y) multiplies each anchor's global term) or ``"logit_adjust"``
            (Ω ≡ 1 and κ·log π_c is added to every centre logit z·μ_c/τ, positives included).
        kappa: κ ≥ 0 for ``logit_adjust`` (ignored by ``reweight``).
        variant: ``"r1"`` (default), ``"r2"`` (strict split: pure alignment / pure repulsion),
            ``"r3"`` (R1 with last epoch's class means as centres and in-epoch counts in Ω) or
            ``"r4"`` (R1 with a class-balanced queue of extra negatives in D_loc).
        local_repulsion_only: R1/R3/R4: anchors without local positives get the repulsion term
            log[(1/|Y⁻|)·Σ_{c≠y, S_c≠∅} mean_{k∈S_c} exp(z·k/τ)] and join the local mean; anchors with
            no negative class present (Y⁻ = ∅) still contribute nothing.
        r2_batch_positives: R2 only: add L⁺ to the global positives.
        queue_size: R4 only: K slots per class of ``max(1, queue_size // K)`` entries each.
        dim: the embedding size D, if known: R3/R4 state is then allocated at once (otherwise at the
            first forward), so every step of a compiled training loop sees the same buffer shapes.

    Which anchors are averaged in L_LB: R1/R3/R4 those with L⁺ ≠ ∅ (plus, with
    ``local_repulsion_only``, those with L⁺ = ∅ and Y⁻ ≠ ∅); R2 those with Y⁻ ≠ ∅. None gives 0.
    R3: a class's centre is the normalised mean of its embeddings over the previous epoch; classes
    not seen then, and all classes in the first epoch, use ``prototypes``. Ω uses 1 + the images seen
    in earlier training batches of this epoch (Ω ≡ 1 on each epoch's first batch).
    R4: queue entries of classes c ≠ y join S_c (own-class entries are unused); a training step
    contrasts with the queue as it was before its own batch is enqueued.

    State (persistent buffers, so a checkpoint resumes them): R3 ``memory`` [K, D], ``memory_valid``
    [K], ``epoch_sum`` [K, D], ``epoch_count`` [K]; R4 ``queue`` [K, S, D], ``queue_len`` [K],
    ``queue_ptr`` [K]. D is taken from the first forward. They are updated (detached) only when
    ``self.training``, always from the whole (global) batch, so every DDP rank holds the same state.
    ``counts``, ``omega`` and ``log_prior`` are non-persistent float32 buffers rebuilt from the counts.

    Shape:
        embeddings [B, 2, D] L2-normalised, labels [B] int64, prototypes [K, D] L2-normalised ->
        BBLOutput of scalars in float32 (float64 if the inputs are float64), for any input dtype.
    """

    def __init__(
        self,
        counts: CountsLike,
        temperature: float = 0.1,
        gamma: float = 0.5,
        lam: float = 1.0,
        global_mode: str = "reweight",
        kappa: float = 1.0,
        variant: str = "r1",
        local_repulsion_only: bool = False,
        r2_batch_positives: bool = False,
        queue_size: int = 1024,
        dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if global_mode not in GLOBAL_MODES:
            raise ValueError(f"global_mode must be one of {GLOBAL_MODES} (got {global_mode!r})")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} (got {variant!r}); r1 is the default")
        for name, flag in (("local_repulsion_only", local_repulsion_only), ("r2_batch_positives", r2_batch_positives)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False (got {flag!r})")
        if local_repulsion_only and variant == "r2":
            raise ValueError("local_repulsion_only has no effect with variant='r2', whose local term is "
                             "already pure repulsion for every anchor; switch it off or use r1/r3/r4")
        if r2_batch_positives and variant != "r2":
            raise ValueError(f"r2_batch_positives only applies to variant='r2' (got variant={variant!r}); "
                             "switch it off or use variant='r2'")
        if isinstance(queue_size, bool) or not isinstance(queue_size, numbers.Integral) or queue_size < 1:
            raise ValueError(f"queue_size must be an integer >= 1 (got {queue_size!r}); 1024 is the CIFAR value")
        self.temperature = _check_number(temperature, "temperature", 0.0, True, "BCL/BBL use 0.1 (CIFAR) or 0.07")
        self.gamma = _check_number(gamma, "gamma", 0.0, False, "0 switches the reweighting off, 0.5 is the default")
        self.lam = _check_number(lam, "lam", 0.0, False, "1.0 is the default local weight")
        self.kappa = _check_number(kappa, "kappa", 0.0, False, "1.0 is the default; 0 adds no prior")
        self.global_mode, self.variant = global_mode, variant
        self.local_repulsion_only, self.r2_batch_positives = local_repulsion_only, r2_batch_positives
        n = as_counts(counts)
        self.num_classes = K = n.shape[0]
        omega = bbl_class_weights(n, self.gamma) if global_mode == "reweight" else torch.ones_like(n)
        self.register_buffer("counts", n.to(torch.float32), persistent=False)
        self.register_buffer("omega", omega.to(torch.float32), persistent=False)
        self.register_buffer("log_prior", (n / n.sum()).log().to(torch.float32), persistent=False)
        self.queue_slots = max(1, int(queue_size) // K)
        if variant == "r3":
            self.register_buffer("memory", torch.zeros(K, 0))
            self.register_buffer("memory_valid", torch.zeros(K, dtype=torch.bool))
            self.register_buffer("epoch_sum", torch.zeros(K, 0))
            self.register_buffer("epoch_count", torch.zeros(K, dtype=torch.int64))
        elif variant == "r4":
            self.register_buffer("queue", torch.zeros(K, self.queue_slots, 0))
            self.register_buffer("queue_len", torch.zeros(K, dtype=torch.int64))
            self.register_buffer("queue_ptr", torch.zeros(K, dtype=torch.int64))
        if dim is not None:
            if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
                raise ValueError(f"dim must be the embedding size, an integer >= 1 (got {dim!r})")
            self._prepare_state(int(dim), self.counts.device)

    # ------------------------------------------------------------------------------------------------

    def forward(self, embeddings: Tensor, labels: Tensor, prototypes: Tensor,
                local_range: Optional[tuple[int, int]] = None) -> BBLOutput:
        """Compute the loss; under DDP pass the global batch and this rank's image range.

        ``local_range=(start, end)``: only the anchors of images start … end−1 enter the sums (the
        global term divides by their 2·(end − start) anchors, the local term by (end − start)/B times
        the number of qualifying anchors of the whole batch), while L⁺, S_c and the contrast sets use
        the whole batch. So Σ over ranges of (end − start)/B · loss is the full-batch loss, and for the
        equal ranges of DDP ranks the plain mean is: DDP's gradient average is exact. None: all images.

        Shape:
            embeddings [B, 2, D], labels [B], prototypes [K, D] -> BBLOutput of scalars.
        """
        B, D = self._check_inputs(embeddings, labels, prototypes)
        start, end = self._check_range(local_range, B)
        labels, dev, K = labels.long(), embeddings.device, self.num_classes
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, prototypes.dtype), torch.float32)
        if self.variant in ("r3", "r4"):
            self._prepare_state(D, dev)
        with _autocast_off(dev):
            z = embeddings.to(dtype)
            E = torch.cat([z[:, 0], z[:, 1]])  # view-major anchors [2B, D]
            Y = labels.repeat(2)
            n_img = class_counts(labels, K)
            if (start, end) == (0, B):  # every anchor (one process): no row selection at all
                rows, Er, yr = None, E, Y
            else:
                idx = torch.arange(start, end, device=dev)
                rows = torch.cat([idx, idx + B])
                Er, yr = E[rows], Y[rows]
            sets = bbl_sets(labels, K, rows)
            centres, omega = self._centres_and_omega(prototypes.to(dtype))
            S = Er @ torch.cat([E, centres]).T / self.temperature  # [R, 2B + K]
            l_gb = self._global_term(S, sets, yr, omega)
            l_lb = self._local_term(S[:, : 2 * B], Er, sets, Y, yr, 2 * n_img)
            total = l_gb + self.lam * l_lb
        if self.training:
            self._update_state(z.detach(), labels, n_img)
        return BBLOutput(total, l_gb, l_lb)

    def _global_term(self, S: Tensor, sets: BBLSets, yr: Tensor, omega: Tensor) -> Tensor:
        if self.global_mode == "logit_adjust":
            K = self.num_classes
            shift = torch.zeros(S.shape[1], dtype=S.dtype, device=S.device)
            shift[-K:] = self.kappa * self.log_prior.to(S)
            S = S + shift
        pos = sets.global_pos
        if self.variant == "r2":  # pure alignment (no contrast set)
            if self.r2_batch_positives:
                pos = pos | sets.local_pos
            ell = -(S * pos).sum(1) / pos.sum(1)  # S is finite: a product is the masked sum
        else:  # |G⁺| = 2, so −½ Σ_p (p − lse) = lse − ½ Σ_p p
            lse = S.masked_fill(~sets.global_contrast, -math.inf).logsumexp(1)
            ell = lse - 0.5 * (S * pos).sum(1)
        return (omega[yr] * ell).sum() / S.shape[0]

    def _local_term(self, Sb: Tensor, Er: Tensor, sets: BBLSets, Y: Tensor, yr: Tensor, n_emb: Tensor) -> Tensor:
        K, nb = self.num_classes, Sb.shape[1]
        avail = n_emb + self.queue_len if self.variant == "r4" else n_emb  # |S_c|: batch embeddings (+ queue)
        own = yr[:, None] == Y[None, :]
        # |S_y(i)| excludes the anchor's two views; own-class queue entries are never used
        size = torch.where(own, (n_emb[yr] - 2)[:, None], avail[Y][None, :]).to(Sb.dtype)  # log of ints is fp32
        mask = sets.local_contrast[:, :nb] & ~own if self.variant == "r2" else sets.local_contrast[:, :nb]
        parts = [(Sb - size.clamp_min(1).log()).masked_fill(~mask, -math.inf)]
        has_any = mask.any(1)
        if self.variant == "r4":
            Q = self.queue.flatten(0, 1).to(Sb.dtype)
            qy = torch.arange(K, device=Sb.device).repeat_interleave(self.queue_slots)
            filled = (torch.arange(self.queue_slots, device=Sb.device)[None, :] < self.queue_len[:, None]).flatten()
            qmask = filled[None, :] & (qy[None, :] != yr[:, None])
            Sq = Er @ Q.T / self.temperature - avail[qy].to(Sb.dtype).clamp_min(1).log()
            parts.append(Sq.masked_fill(~qmask, -math.inf))
            has_any = has_any | qmask.any(1)
        # rows with an empty denominator get a finite dummy so that no NaN gradient can leak
        log_d = torch.where(has_any[:, None], torch.cat(parts, 1), 0.0).logsumexp(1)
        present = avail > 0
        n_neg = (present.sum() - present[yr].long()).to(Sb.dtype)  # |Y⁻|
        if self.variant == "r2":
            ell, use = log_d, n_neg > 0
        else:
            lpos = sets.local_pos[:, :nb]
            n_pos = lpos.sum(1)
            ell = log_d - (Sb * lpos).sum(1) / n_pos.clamp_min(1)
            use = n_pos > 0
            if self.local_repulsion_only:  # lone anchors: S_y(i) = ∅, so log_d covers Y⁻ only
                lone = ~use & (n_neg > 0)
                ell = torch.where(lone, log_d - n_neg.clamp_min(1).log(), ell)
                use = use | lone
        # L_LB is the mean over the qualifying anchors of the WHOLE batch. With a local_range (this rank's
        # rows under DDP) the sum over its rows is divided by that count times the rows' share, so the
        # share-weighted average over ranges (DDP's plain mean over equal shares) is exactly L_LB.
        # Whether an anchor qualifies depends on counts only: |L⁺| = n_emb[y] − 2 and |Y⁻|.
        n_neg_all = present.sum() - present[Y].long()
        if self.variant == "r2":
            use_all = n_neg_all > 0
        else:
            use_all = n_emb[Y] > 2
            if self.local_repulsion_only:
                use_all = use_all | (n_neg_all > 0)
        denom = use_all.sum().to(Sb.dtype) * (Sb.shape[0] / Y.shape[0])
        # ell is finite on every row (empty denominators got a dummy): a product is the masked sum
        return (ell * use).sum() / denom.clamp_min(Sb.shape[0] / Y.shape[0])

    def _centres_and_omega(self, prototypes: Tensor) -> tuple[Tensor, Tensor]:
        dtype = prototypes.dtype
        if self.variant != "r3":
            return prototypes, self.omega.to(prototypes)
        centres = torch.where(self.memory_valid[:, None], self.memory.to(dtype), prototypes)
        if self.global_mode == "logit_adjust":
            return centres, torch.ones_like(self.omega, dtype=dtype)
        n = self.epoch_count.to(dtype) + 1.0  # +1 smoothing: unseen classes count as one image
        raw = n.pow(-self.gamma)
        return centres, raw * n.sum() / (n * raw).sum()

    # ------------------------------------------------------------------------------------------------
    # R3 / R4 state

    @torch.no_grad()
    def start_epoch(self) -> None:
        """R3: roll this epoch's class means into the memory and reset the counts; a no-op otherwise.

        Call it at the start of every epoch (the first included). Classes with no image in the
        finished epoch fall back to the prototypes.
        """
        if self.variant != "r3":
            return
        seen = self.epoch_count > 0
        self.memory = torch.where(seen[:, None], F.normalize(self.epoch_sum, dim=1, eps=1e-12), 0.0)
        self.memory_valid = seen
        self.epoch_sum = torch.zeros_like(self.epoch_sum)
        self.epoch_count = torch.zeros_like(self.epoch_count)

    def _prepare_state(self, D: int, device: torch.device) -> None:
        for name in _LAZY_STATE:
            buf = self._buffers.get(name)
            if buf is None:
                continue
            if buf.shape[-1] == 0:
                self._buffers[name] = buf.new_zeros(*buf.shape[:-1], D)
            elif buf.shape[-1] != D:
                raise ValueError(f"embedding size changed: the {self.variant} state holds D={buf.shape[-1]}, "
                                 f"got D={D}; build a new BBLLoss for a new projection head")
        for name, buf in self._buffers.items():
            if buf is not None and buf.device != device:  # follow the inputs, like the class buffers
                self._buffers[name] = buf.to(device)

    @torch.no_grad()
    def _update_state(self, z: Tensor, labels: Tensor, n_img: Tensor) -> None:
        flat = z.reshape(-1, z.shape[-1]).float()  # image-major: (image 0 view 1, image 0 view 2, …)
        lab = labels.repeat_interleave(2)
        # out-of-place updates: the old tensors may be saved by autograd for this step's backward
        if self.variant == "r3":
            self.epoch_sum = self.epoch_sum.index_add(0, lab, flat)
            self.epoch_count = self.epoch_count + n_img
        elif self.variant == "r4":
            S, n = self.queue_slots, 2 * n_img
            order = torch.sort(lab, stable=True).indices
            first = torch.cumsum(n, 0) - n
            rank = torch.empty_like(lab)
            rank[order] = torch.arange(lab.shape[0], device=lab.device) - first[lab[order]]
            keep = rank >= n[lab] - S  # a class with more than S new entries keeps its last S (FIFO)
            slot = (self.queue_ptr[lab] + rank) % S
            # Kept entries have distinct (class, slot) targets; the others go to one scratch row that is
            # cut off again. No boolean-mask indexing: its data-dependent size would sync the GPU.
            K, D = self.queue.shape[0], self.queue.shape[2]
            target = torch.where(keep, lab * S + slot, K * S)
            rows = torch.cat([self.queue.reshape(K * S, D), self.queue.new_zeros(1, D)])
            rows = rows.index_put((target,), flat.to(rows.dtype))
            self.queue = rows[: K * S].view(K, S, D)
            self.queue_ptr = (self.queue_ptr + n) % S
            self.queue_len = torch.clamp(self.queue_len + n, max=S)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # the lazily sized state buffers take the checkpoint's D before the strict shape check
        for name in _LAZY_STATE:
            key, buf = prefix + name, self._buffers.get(name)
            if buf is not None and key in state_dict and buf.shape[-1] == 0:
                self._buffers[name] = torch.zeros_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------

    def _check_inputs(self, embeddings: Tensor, labels: Tensor, prototypes: Tensor) -> tuple[int, int]:
        if embeddings.dim() != 3 or embeddings.shape[1] != 2:
            raise ValueError("embeddings must be [B, 2, D] (two contrastive views per image, V = 2; got shape "
                             f"{tuple(embeddings.shape)}); stack the views with torch.stack([z1, z2], dim=1)")
        B, _, D = embeddings.shape
        if B == 0:
            raise ValueError("embeddings hold no image (B = 0)")
        if not embeddings.dtype.is_floating_point or not prototypes.dtype.is_floating_point:
            raise ValueError(f"embeddings and prototypes must be floating point (got {embeddings.dtype}, "
                             f"{prototypes.dtype})")
        if labels.dim() != 1 or labels.shape[0] != B:
            raise ValueError(f"labels must be [B] = [{B}] to match embeddings (got shape {tuple(labels.shape)})")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices (got dtype {labels.dtype})")
        # the range is checked on CPU only (free there); on a GPU the check would sync every step and an
        # out-of-range label trips index_add's device-side bounds check instead
        if hostsync.reads_are_free(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}) (got min "
                             f"{int(labels.min())}, max {int(labels.max())})")
        if prototypes.dim() != 2 or prototypes.shape != (self.num_classes, D):
            raise ValueError(f"prototypes must be [K, D] = [{self.num_classes}, {D}] (one centre per class of "
                             f"the counts, same D as the embeddings; got shape {tuple(prototypes.shape)})")
        return B, D

    @staticmethod
    def _check_range(local_range: Optional[tuple[int, int]], B: int) -> tuple[int, int]:
        if local_range is None:
            return 0, B
        ok = (isinstance(local_range, (tuple, list)) and len(local_range) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in local_range))
        if not ok or not 0 <= local_range[0] < local_range[1] <= B:
            raise ValueError(f"local_range must be (start, end) with 0 <= start < end <= B = {B} "
                             f"(got {local_range!r}); it names this rank's images in the gathered batch")
        return int(local_range[0]), int(local_range[1])

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, temperature={self.temperature}, gamma={self.gamma}, "
                f"lam={self.lam}, global_mode={self.global_mode!r}, kappa={self.kappa}, variant={self.variant!r}")
