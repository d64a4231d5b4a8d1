"""Balanced contrastive loss (BCL; Zhu et al., arXiv 2207.09052), exactly docs/methods.md §2.3.

The official code's defects (docs/methods.md §2.6) are not copied: prototypes are never anchors, the
own-class count excludes the anchor, every class count includes its prototype, the per-element weights
come from a scatter-add + ``gather`` on the device (no Python loop over the 2B + C contrast entries and
no host sync),
and under DDP the loss is averaged over this rank's anchors against the all-gathered batch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from longtail import hostsync
from longtail.losses._common import class_counts
from longtail.losses.contrastive import check_reduction, check_temperature, contrast_set, no_autocast, reduce_anchors


def _check_prototypes(prototypes: Optional[Tensor], dim: int, complement: bool, z: Tensor) -> Optional[Tensor]:
    if prototypes is None:
        if complement:
            raise ValueError("prototypes [C, D] are required with class_complement=True; pass the prototype "
                             "head's output normalize(q(W)), or build the loss with class_complement=False")
        return None
    if not isinstance(prototypes, Tensor) or prototypes.dim() != 2 or prototypes.shape[0] == 0 \
            or prototypes.shape[1] != dim:
        got = tuple(prototypes.shape) if isinstance(prototypes, Tensor) else type(prototypes).__name__
        raise ValueError(f"prototypes must be a [C, D] = [num_classes, {dim}] tensor, one row per class with "
                         f"the embeddings' dimension; got {got}")
    if not prototypes.dtype.is_floating_point:
        raise ValueError(f"prototypes must be a float tensor (got dtype {prototypes.dtype})")
    if prototypes.device != z.device:
        raise ValueError(f"prototypes are on {prototypes.device} but embeddings on {z.device}; "
                         "move both to the same device")
    return prototypes.to(z.dtype)


def _check_label_range(labels: Tensor, num_classes: Optional[int]) -> None:
    # Checked on CPU only, where it costs nothing. On a GPU the check would be a host sync on every
    # step; there an out-of-range label instead trips the device-side bounds check of index_add.
    if not hostsync.reads_are_free(labels) or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is None and lo < 0:
        raise ValueError(f"labels must be class indices >= 0 (got min {lo})")
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) to match the {num_classes} prototypes "
                         f"(got min {lo}, max {hi})")


def _label_counts(target_y: Tensor, num_classes: Optional[int]) -> Tensor:
    """For every contrast entry a, how many entries share its label: m_{label(a)}. Shape: [M] -> [M].

    With the number of classes known (prototypes) a scatter-add into C bins; without it a pairwise
    comparison of the M = N·V labels. Neither needs the largest label on the host (``bincount``
    does, which is a GPU->CPU sync on every step).
    """
    if num_classes is not None:
        return class_counts(target_y, num_classes).index_select(0, target_y)
    return (target_y[:, None] == target_y[None, :]).sum(0)


class BCLLoss(nn.Module):
    """Balanced contrastive loss L_BCL (docs/methods.md §2.3).

    Anchors are the N·V sample embeddings (prototypes never are). The contrast set A is the samples
    plus, with ``class_complement``, the C prototypes (prototype k has label k). With m_k the number
    of members of A with label k (V·b_k + 1 with the complement, V·b_k without; b_k images of class k
    in the batch), for anchor i of label y:

    - log D_i = logsumexp over a ∈ A \\ {i} of [ z_i·a/τ − log(m_{label(a)} − 1[label(a) = y]) ]
      (class-averaged: each class contributes the mean of its exp-similarities, the anchor excluded
      from its own class's sum and count; an absent class contributes exactly exp(z_i·c_k/τ));
    - P(i) = {a ∈ A \\ {i} : label(a) = y}: the other views, the other same-class samples and, with
      the complement, the class prototype (|P(i)| ≥ 2 with the complement and V = 2);
    - L_i = log D_i − (1/|P(i)|) Σ_{p∈P(i)} z_i·p/τ, and L_BCL = mean_i L_i.

    ``class_averaging=False`` sets every weight to 1; ``class_complement=False`` drops the prototypes
    (the ``prototypes`` argument is then unused and may be None). With both off the loss is SupCon
    (:class:`~longtail.losses.supcon.SupConLoss`). Gradients reach the classifier W through the
    prototypes. An anchor without positives (only possible without the complement and with V = 1) is
    skipped as in SupCon: excluded from the mean, 0 in ``reduction="none"``.

    The math runs in float32 even under autocast (float64 inputs stay float64). Inputs are used as
    given; L2-normalise embeddings and prototypes first.

    Args:
        temperature: τ > 0 (0.1 CIFAR, 0.07 ImageNet-LT/iNat).
        class_averaging: weight each class by 1/count in the denominator.
        class_complement: add the C class prototypes to the contrast set.
        reduction: ``"mean"`` (scalar) or ``"none"`` (per-anchor losses, image-major: anchor n·V + v is
            view v of image n).

    Shape:
        embeddings [N, V, D] (L2-normalised), labels [N] integer in [0, C), prototypes [C, D]
        (L2-normalised) or None without the complement, ref_embeddings [R, D] with ref_labels [R] (extra
        contrast entries, never anchors) or None, local_range (start, end) or None
        -> scalar, or [N·V] (``[(end − start)·V]`` with ``local_range``) for ``reduction="none"``.
        float32 (float64 for float64 embeddings).

    ``local_range=(start, end)``: for DDP. ``embeddings``/``labels`` are the all-gathered global batch
    (``engine.distributed.all_gather_with_grad``); only the anchors of images start..end−1 enter the
    mean, while the contrast set and the counts m_k use the global batch (docs/methods.md §2.6 item 5).
    """

    def __init__(self, temperature: float = 0.1, class_averaging: bool = True, class_complement: bool = True,
                 reduction: str = "mean") -> None:
        super().__init__()
        for name, flag in (("class_averaging", class_averaging), ("class_complement", class_complement)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False (got {flag!r})")
        self.temperature = check_temperature(temperature)
        self.class_averaging = class_averaging
        self.class_complement = class_complement
        self.reduction = check_reduction(reduction)

    def forward(self, embeddings: Tensor, labels: Tensor, prototypes: Optional[Tensor] = None,
                ref_embeddings: Optional[Tensor] = None, ref_labels: Optional[Tensor] = None,
                local_range: Optional[tuple[int, int]] = None) -> Tensor:
        cs = contrast_set(embeddings, labels, ref_embeddings, ref_labels, local_range)
        protos = _check_prototypes(prototypes, cs.z.shape[1], self.class_complement, cs.z)
        _check_label_range(labels, None if protos is None else protos.shape[0])
        if self.class_complement:
            cs = cs.with_centres(protos)  # contrast set: N·V samples (+ references), then C prototypes
        target_y = cs.labels
        with no_autocast(cs.z.device):
            sim = cs.similarity(self.temperature)  # [A, M], M = N·V (+ R) (+ C)
            is_self = cs.is_self()
            own = cs.same_label()
            logits = sim
            if self.class_averaging:
                # m_{label(a)} for every contrast entry a: a scatter-add + gather, no loop over entries.
                count = _label_counts(target_y, None if protos is None else protos.shape[0]).to(sim.dtype)  # [M]
                # Own class: the anchor leaves the count. m − 1 is 0 only on the (masked) self column
                # of a one-member class; the clamp keeps log finite there. Logs are taken on [M], not [A, M].
                logits = sim - torch.where(own, (count - 1).clamp_min(1).log(), count.log())
            log_d = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
            pos = own & ~is_self
            n_pos = pos.sum(1)
            valid = n_pos > 0
            loss = log_d - torch.where(pos, sim, 0.0).sum(1) / n_pos.clamp_min(1)
            loss = torch.where(valid, loss, 0.0)
        return reduce_anchors(loss, valid, self.reduction)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, class_averaging={self.class_averaging}, "
                f"class_complement={self.class_complement}, reduction={self.reduction!r}")
