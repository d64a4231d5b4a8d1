"""BBL (reconstruction): a bi-granularity balance loss, docs/methods.md §3 and docs/methods/bbl.md.

RECONSTRUCTION NOTICE. Only the abstract of Ren, Li, Wu, Fu, "Bi-granularity Balance Learning"
(CVIU 261:104469, 2025) could be read. Every formula here is OUR reconstruction of the idea it
describes (decouple the contrastive attraction/repulsion into a global and a local balance term); it
is not the authors' loss, and numbers obtained with it are never a reproduction of the paper.

Anchor rows are the 2B contrastive embeddings, image-major like every contrastive loss of the toolbox
(row 2i + a is view a of image i, :mod:`longtail.losses.contrastive`). Targets are the contrast set
(the 2B batch embeddings, the R4 queue entries, the K centres). Per anchor z with label y (§3.3–3.4):

- global (R1): G⁺ = {other view, μ_y}, G = {other view} ∪ {μ_0 … μ_{K−1}},
  ℓ_GB = −½ Σ_{p∈G⁺} [z·p/τ − logsumexp_{k∈G} z·k/τ], L_GB = (1/2B) Σ Ω(y)·ℓ_GB;
- local (R1): L⁺ = both views of the other same-class images, S_c = class-c batch embeddings minus the
  anchor's own two views, log D_loc = logsumexp_{c, k∈S_c} [z·k/τ − log|S_c|],
  ℓ_LB = log D_loc − mean_{p∈L⁺} z·p/τ, averaged over the anchors with L⁺ ≠ ∅ (0 if none).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail import hostsync
from longtail.losses._common import CountsLike, as_counts, class_counts
from longtail.losses.bbl_terms import (BBLSets, bbl_class_weights, bbl_sets, check_number, global_alignment,
                                       global_contrast, local_balance)
from longtail.losses.contrastive import contrast_set, no_autocast

__all__ = ["BBLLoss", "BBLOutput", "BBLSets", "bbl_class_weights", "bbl_sets", "GLOBAL_MODES", "VARIANTS"]

GLOBAL_MODES = ("reweight", "logit_adjust")
VARIANTS = ("r1", "r2", "r3", "r4")
_LAZY_STATE = ("memory", "epoch_sum", "queue")  # state buffers whose last dim (D) is known at the 1st forward


class BBLOutput(NamedTuple):
    """total = global_term + λ·local_term (float32 or float64 scalars; α, β are the method's)."""

    total: Tensor
    global_term: Tensor
    local_term: Tensor



class BBLLoss(nn.Module):
    """BBL (reconstruction) loss: L_GB + λ·L_LB with the variants R1–R4 of docs/methods.md §3.3–3.6.

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
        self.temperature = check_number(temperature, "temperature", 0.0, True, "BCL/BBL use 0.1 (CIFAR) or 0.07")
        self.gamma = check_number(gamma, "gamma", 0.0, False, "0 switches the reweighting off, 0.5 is the default")
        self.lam = check_number(lam, "lam", 0.0, False, "1.0 is the default local weight")
        self.kappa = check_number(kappa, "kappa", 0.0, False, "1.0 is the default; 0 adds no prior")
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
                ref_embeddings: Optional[Tensor] = None, ref_labels: Optional[Tensor] = None,
                local_range: Optional[tuple[int, int]] = None) -> BBLOutput:
        """Compute the loss; under DDP pass the global batch and this rank's image range.

        ``local_range=(start, end)``: only the anchors of images start … end−1 enter the sums (the
        global term divides by their 2·(end − start) anchors, the local term by (end − start)/B times
        the number of qualifying anchors of the whole batch), while L⁺, S_c and the contrast sets use
        the whole batch. So Σ over ranges of (end − start)/B · loss is the full-batch loss, and for the
        equal ranges of DDP ranks the plain mean is: DDP's gradient average is exact. None: all images.
        ``ref_embeddings``/``ref_labels`` (extra negatives, like R4's queue, which enters the same way) are
        not supported by the reconstruction's sets and must be None.

        Shape:
            embeddings [B, 2, D], labels [B], prototypes [K, D] -> BBLOutput of scalars.
        """
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError("BBLLoss takes no ref_embeddings: its only extra entries are R4's own queue")
        B, D = self._check_inputs(embeddings, labels, prototypes)
        start, end = self._check_range(local_range, B)
        labels, dev, K = labels.long(), embeddings.device, self.num_classes
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, prototypes.dtype), torch.float32)
        if self.variant in ("r3", "r4"):
            self._prepare_state(D, dev)
        with no_autocast(dev):
            z = embeddings.to(dtype)
            n_img = class_counts(labels, K)
            queue = self._queue_entries() if self.variant == "r4" else None
            cs = contrast_set(z, labels, None if queue is None else queue[0], None if queue is None else queue[1],
                              local_range=(start, end))
            centres, omega = self._centres_and_omega(prototypes.to(dtype))
            cs = cs.with_centres(centres)
            n_queue = 0 if queue is None else queue[1].shape[0]
            rows = None if (start, end) == (0, B) else cs.rows
            sets = bbl_sets(labels, K, rows, entry_labels=cs.labels, entry_images=cs.images, n_queue=n_queue)
            S = cs.similarity(self.temperature)  # [R, 2B + Q + K]
            Y, yr = cs.labels[:cs.n_batch], cs.anchor_labels
            l_gb = self._global(S, sets, omega[yr])
            l_lb = local_balance(S, sets, Y, yr, 2 * n_img, repulsion_only=self.variant == "r2",
                                 lone_repulsion=self.local_repulsion_only,
                                 queue=None if queue is None else (queue[1], queue[2], self.queue_len))
            total = l_gb + self.lam * l_lb
        if self.training:
            self._update_state(z.detach(), labels, n_img)
        return BBLOutput(total, l_gb, l_lb)

    def _global(self, S: Tensor, sets: BBLSets, omega_rows: Tensor) -> Tensor:
        if self.global_mode == "logit_adjust":  # κ·log π_c on every centre logit, positives included
            K = self.num_classes
            shift = torch.zeros(S.shape[1], dtype=S.dtype, device=S.device)
            shift[-K:] = self.kappa * self.log_prior.to(S)
            S = S + shift
        if self.variant == "r2":
            return global_alignment(S, sets, omega_rows, self.r2_batch_positives)
        return global_contrast(S, sets, omega_rows)

    def _queue_entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """R4's queue as reference entries: (embeddings [K·S, D], labels [K·S], filled [K·S])."""
        K, S = self.num_classes, self.queue_slots
        dev = self.queue.device
        labels = hostsync.cached(("bbl_queue_labels", K, S), dev, lambda d: torch.arange(K, device=d)
                                 .repeat_interleave(S))
        slots = hostsync.cached(("arange", S), dev, lambda d: torch.arange(S, device=d))
        filled = (slots[None, :] < self.queue_len[:, None]).flatten()
        return self.queue.flatten(0, 1), labels, filled

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
