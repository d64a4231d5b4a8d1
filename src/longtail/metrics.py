"""Evaluation metrics (docs/protocol.md §5) as pure functions of fixed-size sufficient statistics.

A batch of predictions is reduced to three statistics whose size does not depend on the number of
samples: the confusion matrix, the top-k correct counts and the calibration bins. Every number
reported (top-1, per-class accuracy, Many/Medium/Few, top-k, ECE) is a function of those statistics, so
summing them over batches -- or over processes with one all-reduce -- gives exactly the numbers of one
big batch. Nothing here talks to ``torch.distributed``; the caller reduces :meth:`MetricAccumulator.state`.

Shot groups use the *training* count n_c (:class:`~longtail.data.splits.ShotRule`; by default Many n_c >
100, Medium 20 <= n_c <= 100, Few n_c < 20). A group's accuracy is the unweighted mean of a_c over its
classes present in the test set; an empty group is ``None``, never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from longtail import hostsync
from longtail.data.splits import GROUPS, ShotRule

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int], Sequence[float]]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(preds: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        preds: predicted class per sample.
        targets: true class per sample.
        num_classes: C.

    Returns:
        int64 array ``cm`` with ``cm[t, p]`` = number of samples of class t predicted as p.

    Shape:
        preds, targets: [N] integers in [0, C); returns [C, C] (rows = true class).
    """
    p = _numpy(preds).astype(np.int64).reshape(-1)
    t = _numpy(targets).astype(np.int64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"preds and targets must have the same length (got {p.shape[0]} and {t.shape[0]})")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
    for name, v in (("preds", p), ("targets", t)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) for num_classes={num_classes} "
                f"(got values from {v.min()} to {v.max()})"
            )
    # One bincount over the flat index target * C + pred (torchmetrics' trick): O(N), no Python loop.
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class accuracy a_c in percent from a confusion matrix: float64, NaN for classes without test
    samples (an absent class has no accuracy). Shape: cm [C, C] (rows = true class) -> [C]."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix (got shape {cm.shape})")
    return _accuracy_from_counts(cm.sum(axis=1), np.diag(cm))


def _accuracy_from_counts(total: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """100·correct/total per class; NaN where total is 0. Shape: [C], [C] -> float64 [C]."""
    total, correct = np.asarray(total, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    out = np.full(total.shape[0], np.nan)
    present = total > 0
    out[present] = 100.0 * correct[present] / total[present]
    return out


def shot_group_accuracy(per_class: ArrayLike, train_counts: ArrayLike,
                        rule: Optional[ShotRule] = None) -> dict[str, Optional[float]]:
    """Many / Medium / Few accuracy: unweighted mean of a_c over the group's classes in the test set.

    Args:
        per_class: a_c in percent, NaN for classes absent from the test set.
        train_counts: training images per class, n_c.
        rule: the group thresholds (default: Many n > 100, Few n < 20).

    Returns:
        ``{"many": float | None, "medium": ..., "few": ...}``; ``None`` when the group has no class
        present in the test set.

    Shape:
        per_class, train_counts: [C].
    """
    acc = _numpy(per_class).astype(np.float64).reshape(-1)
    counts = _numpy(train_counts).reshape(-1)
    if acc.shape != counts.shape:
        raise ValueError(
            f"per_class has {acc.shape[0]} classes but train_counts has {counts.shape[0]}; "
            "pass the training counts of the same dataset"
        )
    ids = (rule or ShotRule()).ids(counts)
    out: dict[str, Optional[float]] = {}
    for k, name in enumerate(GROUPS):
        vals = acc[(ids == k) & ~np.isnan(acc)]
        out[name] = float(vals.mean()) if vals.size else None
    return out


@dataclass
class CalibrationBins:
    """Fixed-size calibration statistics over equal-width confidence bins on [0, 1].

    Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to bin 0.

    Shape:
        count (int64), conf_sum (float64), correct_sum (float64): [n_bins].
    """

    count: np.ndarray
    conf_sum: np.ndarray
    correct_sum: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    def merge(self, other: "CalibrationBins") -> "CalibrationBins":
        """Statistics of the union of both sample sets."""
        if not isinstance(other, CalibrationBins):
            raise TypeError(f"can only merge CalibrationBins (got {type(other).__name__})")
        if other.n_bins != self.n_bins:
            raise ValueError(f"cannot merge {self.n_bins} bins with {other.n_bins} bins; use the same n_bins")
        return CalibrationBins(
            self.count + other.count, self.conf_sum + other.conf_sum, self.correct_sum + other.correct_sum
        )

    __add__ = merge


def _bin_stats(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, ...]:
    """(count, conf_sum, correct_sum) on conf's device; shared by :func:`calibration_bins` and the
    accumulator so both bin identically."""
    conf = conf.to(torch.float64)  # float32 -> float64 is exact; the edges are exact i / n
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=conf.device) / n_bins
    # bucketize(right=False) returns i with edges[i-1] < x <= edges[i], i.e. bin i-1; x == 0 gives -1.
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.int64, device=conf.device)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    correct_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    # index_add_ rather than a weighted bincount: the latter has no deterministic CUDA kernel.
    count.index_add_(0, idx, torch.ones_like(idx))
    conf_sum.index_add_(0, idx, conf)
    correct_sum.index_add_(0, idx, correct.to(torch.float64))
    return count, conf_sum, correct_sum


def calibration_bins(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> CalibrationBins:
    """Bin predictions by confidence.

    Args:
        confidences: confidence of the predicted class, in [0, 1].
        correct: whether each prediction is right (bool or 0/1).
        n_bins: number of equal-width bins on [0, 1].

    Shape:
        confidences, correct: [N].
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1 (got {n_bins})")
    conf = torch.as_tensor(_numpy(confidences), dtype=torch.float64).reshape(-1)
    corr = torch.as_tensor(_numpy(correct)).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(f"confidences and correct must have the same length (got {conf.numel()} and {corr.numel()})")
    if conf.numel() and (conf.min() < 0 or conf.max() > 1 or torch.isnan(conf).any()):
        raise ValueError(
            f"confidences must lie in [0, 1] (got values from {conf.min().item()} to {conf.max().item()}); "
            "pass softmax probabilities, not logits"
        )
    count, conf_sum, correct_sum = _bin_stats(conf, corr, n_bins)
    return CalibrationBins(count.numpy(), conf_sum.numpy(), correct_sum.numpy())


def ece(bins: CalibrationBins) -> float:
    """Expected calibration error in percent: sum_b |acc_b - conf_b| * n_b / N * 100."""
    n = int(bins.count.sum())
    if n == 0:
        raise ValueError("ECE of zero samples is undefined; the calibration bins are empty")
    nonempty = bins.count > 0
    # |acc_b - conf_b| * n_b = |correct_sum_b - conf_sum_b|: no division per bin needed.
    gap = np.abs(bins.correct_sum[nonempty] - bins.conf_sum[nonempty]).sum()
    return float(100.0 * gap / n)


def _none_if_nan(x: float) -> Optional[float]:
    return None if math.isnan(x) else float(x)


#: Up to this many classes the accumulator also keeps the full confusion matrix by default (8 MB).
CONFUSION_MAX_CLASSES = 1000


class MetricAccumulator:
    """Sums fixed-size statistics over batches, then computes every metric at once.

    The state lives on the device of the logits it is fed (no host sync per batch apart from a
    target range check). Every tensor in :meth:`state` is reduced with SUM across processes::

        st = acc.state(); [dist.all_reduce(t) for t in st.values()]; acc.load_state(st)

    The metrics need only per-class totals and hits (O(C)). The full confusion matrix costs C^2 int64
    (C = 1000: 8 MB; C = 8142: 530 MB, and as much again in every all-reduce), so by default it is kept
    only up to :data:`CONFUSION_MAX_CLASSES` classes.

    Args:
        num_classes: C.
        k: top-k accuracies to track; with C < k the top-k is over min(k, C) classes.
        ece_bins: equal-width calibration bins.
        keep_confusion: also accumulate the C x C confusion matrix (default: when C <= 1000).
    """

    def __init__(self, num_classes: int, k: Sequence[int] = (1, 5), ece_bins: int = 15,
                 keep_confusion: Optional[bool] = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        if not k or any(int(x) < 1 for x in k):
            raise ValueError(f"k must be a non-empty list of positive integers (got {list(k)})")
        if ece_bins < 1:
            raise ValueError(f"ece_bins must be >= 1 (got {ece_bins})")
        self.num_classes = int(num_classes)
        self.k = tuple(int(x) for x in k)
        self.ece_bins = int(ece_bins)
        self.keep_confusion = (self.num_classes <= CONFUSION_MAX_CLASSES if keep_confusion is None
                               else bool(keep_confusion))
        self.reset()

    def reset(self, device: Union[str, torch.device, None] = None) -> None:
        """Zero every statistic (on ``device``, default CPU; moved to the logits' device on update)."""
        c, n = self.num_classes, self.ece_bins
        self._state = {
            "class_total": torch.zeros(c, dtype=torch.int64, device=device),
            "class_correct": torch.zeros(c, dtype=torch.int64, device=device),
            "topk_correct": torch.zeros(len(self.k), dtype=torch.int64, device=device),
            "calib_count": torch.zeros(n, dtype=torch.int64, device=device),
            "calib_conf_sum": torch.zeros(n, dtype=torch.float64, device=device),
            "calib_correct_sum": torch.zeros(n, dtype=torch.float64, device=device),
        }
        if self.keep_confusion:
            self._state["confusion"] = torch.zeros(c * c, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch.

        Shape:
            logits: [B, C] floating; targets: [B] integer class ids in [0, C).
        """
        c = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"logits must have shape [B, {c}] (got {tuple(logits.shape)})")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point (got {logits.dtype})")
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must have shape [{logits.shape[0]}] to match the logits (got {tuple(targets.shape)})"
            )
        if targets.numel() == 0:
            return
        targets = targets.to(device=logits.device, dtype=torch.int64)
        # checked where reading is free; on a GPU a check per batch would sync, and an out-of-range
        # target trips the device-side bounds check of the scatter below instead
        if hostsync.reads_are_free(targets) and (targets.min() < 0 or targets.max() >= c):
            raise ValueError(
                f"targets must lie in [0, {c}) (got values from {targets.min().item()} to {targets.max().item()})"
            )
        if self._state["class_total"].device != logits.device:
            self._state = {name: t.to(logits.device) for name, t in self._state.items()}
        st = self._state

        # float32 even under bf16 autocast: confidences near 1 need the mantissa. Rank by logits, not
        # by probabilities, which can underflow to tied zeros far from the top.
        logits = logits.float()
        probs = torch.softmax(logits, dim=1)
        kmax = min(max(self.k), c)
        top = logits.topk(kmax, dim=1).indices  # top[:, 0] is the prediction for every metric
        pred = top[:, 0]
        hits = top == targets[:, None]
        for i, kk in enumerate(self.k):
            st["topk_correct"][i] += hits[:, : min(kk, c)].any(dim=1).sum()
        ones = torch.ones_like(pred)
        st["class_total"].index_add_(0, targets, ones)
        st["class_correct"].index_add_(0, targets, (pred == targets).to(torch.int64))
        if self.keep_confusion:  # index_add_ adds O(B) entries in place; a bincount would allocate C^2
            st["confusion"].index_add_(0, targets * c + pred, ones)
        conf = probs.gather(1, pred[:, None]).squeeze(1)
        for name, t in zip(("calib_count", "calib_conf_sum", "calib_correct_sum"),
                           _bin_stats(conf, pred == targets, self.ece_bins)):
            st[name] += t

    def state(self) -> dict[str, torch.Tensor]:
        """The statistics; every tensor is SUM-reduced across processes (documented contract).

        Shape:
            class_total, class_correct: [C] int64 (test images and top-1 hits per true class);
            confusion (only with ``keep_confusion``): [C*C] int64 (row-major, rows = true class);
            topk_correct: [len(k)] int64;
            calib_count: [n_bins] int64; calib_conf_sum, calib_correct_sum: [n_bins] float64.
        """
        return dict(self._state)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the statistics, e.g. with all-reduced copies of :meth:`state`."""
        if set(state) != set(self._state):
            raise ValueError(f"state must have keys {sorted(self._state)} (got {sorted(state)})")
        for name, ref in self._state.items():
            if tuple(state[name].shape) != tuple(ref.shape):
                raise ValueError(f"state[{name!r}] must have shape {tuple(ref.shape)} (got {tuple(state[name].shape)})")
        self._state = {name: state[name].to(dtype=ref.dtype) for name, ref in self._state.items()}

    @property
    def num_samples(self) -> int:
        return int(self._state["calib_count"].sum().item())

    def confusion(self) -> np.ndarray:
        """The accumulated confusion matrix, int64 [C, C], rows = true class."""
        if not self.keep_confusion:
            raise ValueError(f"this accumulator does not keep the confusion matrix ({self.num_classes} classes); "
                             f"create it with keep_confusion=True")
        return self._state["confusion"].cpu().numpy().reshape(self.num_classes, self.num_classes)

    def calibration(self) -> CalibrationBins:
        st = {n: t.cpu().numpy() for n, t in self._state.items() if n.startswith("calib_")}
        return CalibrationBins(st["calib_count"], st["calib_conf_sum"], st["calib_correct_sum"])

    def compute(self, train_counts: ArrayLike, shots: Optional[ShotRule] = None) -> dict[str, Any]:
        """Every metric, as plain Python values (JSON-ready).

        Args:
            train_counts: training images per class, for the shot groups.
            shots: the shot-group thresholds (default: Many n > 100, Few n < 20).

        Returns:
            ``top1``, ``top<k>`` for each k, ``many``/``medium``/``few`` (percent or None),
            ``per_class`` (percent or None per class), ``ece`` (percent), ``num_samples``, and
            ``calibration`` = {"bins", "count", "confidence" (mean or None), "accuracy" (percent or None)}.
        """
        n = self.num_samples
        if n == 0:
            raise ValueError("no samples were accumulated; call update() with at least one batch first")
        counts = _numpy(train_counts).reshape(-1)
        if counts.shape[0] != self.num_classes:
            raise ValueError(
                f"train_counts has {counts.shape[0]} classes but the accumulator has {self.num_classes}"
            )
        total = self._state["class_total"].cpu().numpy()
        correct = self._state["class_correct"].cpu().numpy()
        per_class = _accuracy_from_counts(total, correct)
        out: dict[str, Any] = {"top1": float(100.0 * correct.sum() / n)}
        topk = self._state["topk_correct"].cpu().numpy()
        for kk, hits in zip(self.k, topk):
            if kk != 1:  # top-1 comes from the per-class hits; both use the same prediction
                out[f"top{kk}"] = float(100.0 * hits / n)
        out.update(shot_group_accuracy(per_class, counts, shots))
        out["per_class"] = [_none_if_nan(a) for a in per_class]
        bins = self.calibration()
        out["ece"] = ece(bins)
        out["num_samples"] = n
        has = bins.count > 0
        safe = np.maximum(bins.count, 1)
        out["calibration"] = {
            "bins": bins.n_bins,
            "count": [int(x) for x in bins.count],
            "confidence": [float(s / m) if h else None for s, m, h in zip(bins.conf_sum, safe, has)],
            "accuracy": [float(100.0 * s / m) if h else None for s, m, h in zip(bins.correct_sum, safe, has)],
        }
        return out


def evaluate_logits(logits: torch.Tensor, targets: torch.Tensor, train_counts: ArrayLike, ece_bins: int = 15,
                    shots: Optional[ShotRule] = None) -> dict[str, Any]:
    """All metrics of one batch of logits (see :meth:`MetricAccumulator.compute`).

    Shape:
        logits: [N, C]; targets: [N]; train_counts: [C].
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C] (got {tuple(logits.shape)})")
    acc = MetricAccumulator(logits.shape[1], ece_bins=ece_bins, keep_confusion=False)
    acc.update(logits, targets)
    return acc.compute(train_counts, shots)
