"""The pinned long-tailed split recipe (docs/protocol.md §2-§3) and shot groups (§5).

The recipe, for C classes, a head count ``n_max`` and an imbalance factor rho:

* ``exp`` profile: class i keeps ``int(n_max * f ** (i / (C - 1.0)))`` images, f = 1/rho as a Python
  float. Class 0 is the largest; classes are never permuted.
* ``step`` profile (Cao et al., LDAM): the first ``C - int(C * step_fraction)`` classes keep ``n_max``, the
  rest keep ``int(n_max * f)``.
* Selection: ``np.random.seed(split_seed)`` once (here: one legacy ``RandomState``), then for each class in
  ascending order shuffle the ascending indices of its images and keep a prefix. Because the shuffles do
  not depend on rho, the subsets are nested across imbalance factors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Optional, Sequence

import numpy as np

from longtail.errors import ConfigError, DataError

PROFILES = ("exp", "step")

#: Shot-group thresholds on the training count n_c: Many n > 100, Medium 20 <= n <= 100, Few n < 20.
MANY_ABOVE = 100
FEW_BELOW = 20
GROUPS = ("many", "medium", "few")


def lt_counts(
    n_max: int,
    num_classes: int,
    imbalance: float,
    profile: str = "exp",
    step_fraction: float = 0.5,
) -> list[int]:
    """Per-class training counts of a long-tailed split.

    Args:
        n_max: images of the largest class (class 0).
        num_classes: C.
        imbalance: rho = n_max / n_min, at least 1.
        profile: ``"exp"`` or ``"step"``.
        step_fraction: share of minority classes for the step profile.
    """
    if imbalance < 1:
        raise ConfigError(f"data.imbalance must be >= 1 (got {imbalance}); use 1 for the balanced set")
    if profile not in PROFILES:
        raise ConfigError(f"data.profile must be one of {PROFILES} (got {profile!r})")
    if num_classes < 1 or n_max < 1:
        raise ConfigError(f"need num_classes >= 1 and n_max >= 1 (got {num_classes}, {n_max})")
    f = 1.0 / float(imbalance)
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * f ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if not 0.0 <= step_fraction <= 1.0:
        raise ConfigError(f"data.step_fraction must be in [0, 1] (got {step_fraction})")
    n_minor = int(num_classes * step_fraction)
    return [int(n_max)] * (num_classes - n_minor) + [int(n_max * f)] * n_minor


def select_lt_indices(labels: Sequence[int] | np.ndarray, counts: Sequence[int], split_seed: int = 0) -> np.ndarray:
    """Original indices kept by the recipe, concatenated in class order.

    Args:
        labels: the full training labels, in release order.
        counts: per-class counts from :func:`lt_counts`.
        split_seed: the split seed (0 in the protocol; separate from the training seed).

    Returns:
        int64 array of original indices: class 0's kept block, then class 1's, ...
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(split_seed)  # legacy MT19937: frozen by NEP 19, unlike default_rng
    blocks = []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n_c > len(idx):
            raise DataError(f"class {c} has {len(idx)} training images but the split needs {n_c}")
        rng.shuffle(idx)
        blocks.append(idx[:n_c])
    return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ShotRule:
    """The shot groups by training count n: Many n > ``many_above``, Medium ``few_below`` <= n <=
    ``many_above``, Few n < ``few_below``. The protocol's rule is 100 / 20 (the ImageNet-LT convention);
    ``eval.many_above`` / ``eval.few_below`` set others, e.g. for datasets whose classes all have more
    than 100 images."""

    many_above: int = MANY_ABOVE
    few_below: int = FEW_BELOW

    def __post_init__(self) -> None:
        if not (0 <= self.few_below <= self.many_above + 1):
            raise ConfigError(f"shot groups need 0 <= eval.few_below <= eval.many_above + 1 "
                              f"(got few_below={self.few_below}, many_above={self.many_above})")

    @classmethod
    def of(cls, record: Optional[dict]) -> "ShotRule":
        """The rule recorded in a summary (``shot_rule``) or a config's ``eval`` section; default if absent."""
        record = record or {}
        return cls(int(record.get("many_above", MANY_ABOVE)), int(record.get("few_below", FEW_BELOW)))

    def to_dict(self) -> dict[str, int]:
        return {"many_above": self.many_above, "few_below": self.few_below}

    def ids(self, counts: Sequence[int] | np.ndarray) -> np.ndarray:
        """Group id per class from its training count: 0 = Many, 1 = Medium, 2 = Few."""
        counts = np.asarray(counts)
        return np.where(counts > self.many_above, 0, np.where(counts >= self.few_below, 1, 2)).astype(np.int64)

    def summary(self, counts: Sequence[int] | np.ndarray) -> dict[str, int]:
        """Number of Many / Medium / Few classes."""
        ids = self.ids(counts)
        return {g: int((ids == k).sum()) for k, g in enumerate(GROUPS)}

    def describe(self) -> str:
        """E.g. ``Many n > 100, Medium 20 ≤ n ≤ 100, Few n < 20``."""
        return (f"Many n > {self.many_above}, Medium {self.few_below} ≤ n ≤ {self.many_above}, "
                f"Few n < {self.few_below}")


def shot_group_ids(counts: Sequence[int] | np.ndarray, rule: Optional[ShotRule] = None) -> np.ndarray:
    """Group id per class from its training count: 0 = Many, 1 = Medium, 2 = Few (``rule``: 100 / 20)."""
    return (rule or ShotRule()).ids(counts)


def shot_summary(counts: Sequence[int] | np.ndarray, rule: Optional[ShotRule] = None) -> dict[str, int]:
    """Number of Many / Medium / Few classes (``rule``: 100 / 20)."""
    return (rule or ShotRule()).summary(counts)


def measured_imbalance(counts: Sequence[int] | np.ndarray) -> Optional[float]:
    """The real imbalance factor of a training split: largest class count / smallest (None when a class
    has no image)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0 or counts.min() <= 0:
        return None
    return float(counts.max()) / float(counts.min())


def indices_sha256(indices: np.ndarray) -> str:
    """sha256 of the selected indices written one per line in ascending order (as ``data indices``)."""
    text = "".join(f"{i}\n" for i in np.sort(np.asarray(indices, dtype=np.int64)))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SplitRecord:
    total: int
    sha256: str


def stored_splits() -> dict[str, dict[str, SplitRecord]]:
    """The persisted split checksums: ``{dataset: {"r<rho>_s<seed>": SplitRecord}}``."""
    text = resources.files("longtail.data").joinpath("splits.json").read_text()
    raw = json.loads(text)
    return {ds: {k: SplitRecord(**v) for k, v in recs.items()} for ds, recs in raw.items()}


def split_key(imbalance: float, split_seed: int, profile: str = "exp") -> str:
    r = int(imbalance) if float(imbalance).is_integer() else imbalance
    return f"{profile}_r{r}_s{split_seed}"


def check_stored_split(dataset: str, imbalance: float, split_seed: int, profile: str, indices: np.ndarray) -> bool:
    """Compare a freshly generated split with the persisted checksum.

    Returns True when a stored record exists and matches, False when none is stored, and raises
    :class:`DataError` on a mismatch (the data or the recipe changed).
    """
    rec = stored_splits().get(dataset, {}).get(split_key(imbalance, split_seed, profile))
    if rec is None:
        return False
    got = indices_sha256(indices)
    if len(indices) != rec.total or got != rec.sha256:
        raise DataError(
            f"the {dataset} long-tailed split (imbalance {imbalance}, split seed {split_seed}) differs from the "
            f"stored one: {len(indices)} images, sha256 {got[:12]}..., expected {rec.total} images, "
            f"sha256 {rec.sha256[:12]}.... The labels on disk are not the official ones."
        )
    return True
