"""Epoch orders: which training samples one epoch visits, and in which order.

A sampler turns the training labels into the *global* index order of one epoch. The order depends only
on ``(seed, epoch)``: every epoch draws from its own ``torch.Generator`` seeded with
``mix_seed(seed, epoch)``, never from the global RNG or Python's ``random``. So any epoch can be rebuilt
on its own (this is what makes resuming bit-exact), and every DDP rank computes the same sequence and
then takes its share of each global batch with :func:`shard` (docs/methods.md §0.5: "ranks take disjoint
shares of one common sequence"). Building an order is once-per-epoch work; the loops over classes below
never run inside a training step.

Samplers:

* ``instance``: a random permutation of all N samples (every sample once per epoch).
* ``class_balanced``: the class-aware sampler of Decoupling (cRT/LWS) and DLSA-CBS, docs/methods.md §0.5.
  One epoch holds ``n_max * C`` samples.
* ``sqrt``: class c drawn with probability ``q_c ∝ n_c ** 0.5``, uniform within the class, N samples
  with replacement (Kang et al. 2020, "square-root sampling").
* ``progressive``: ``q_c(t) = (1 - t/T) * n_c / N + (t/T) / C`` (Kang et al. 2020, "progressively
  balanced"), N samples with replacement.
"""

from __future__ import annotations

import difflib
import math
from typing import Union

import numpy as np
import torch

from longtail.errors import ConfigError
from longtail.registry import SAMPLERS as _REGISTRY

SAMPLERS = ("instance", "class_balanced", "sqrt", "progressive")  # the built-in ones

_MASK64 = (1 << 64) - 1

LabelsLike = Union[np.ndarray, torch.Tensor]


def _splitmix64(x: int) -> int:
    # The SplitMix64 finaliser (Steele et al. 2014): a bijection on 64-bit words whose output bits all
    # depend on all input bits, so nearby inputs (epoch 3 vs 4) give unrelated seeds.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Hash integers (seed, epoch, step, ...) into one seed in ``[0, 2**63)``.

    Order and count matter: ``mix_seed(1, 2)``, ``mix_seed(2, 1)`` and ``mix_seed(1, 2, 0)`` differ.
    Negative integers are taken modulo 2**64.
    """
    h = _splitmix64(len(values))
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1  # 63 bits: valid for torch.Generator.manual_seed and for numpy alike


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless ``0 <= rank < world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size (got rank={rank}, world_size={world_size})")


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of one global batch (sizes differ by at most one; the trainers
    trim every batch to a multiple of the world size, so the shares are equal there).

    The shares of all ranks are disjoint, and concatenated in rank order they ARE the global batch, in
    its order. So the all-gathered batch of the contrastive losses is the single-process batch, and
    anything that depends on the order within a batch (BBL R4's class queues) evolves as on one process.

    Shape:
        indices: [B] -> [B // world_size (+1 for the first B % world_size ranks)].
    """
    start, stop = shard_bounds(len(indices), rank, world_size)
    return indices[start:stop]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of this rank's share (:func:`shard`) of an n-item global batch."""
    check_rank(rank, world_size)
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def _as_labels(labels: LabelsLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D array (got shape {tuple(t.shape)})")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"labels must be integers (got dtype {t.dtype})")
    t = t.to(torch.int64)
    if int(t.min()) < 0:
        raise ValueError(f"labels must be >= 0 (got minimum {int(t.min())})")
    return t


class Sampler:
    """Base class: the global index order of an epoch, deterministic in ``(seed, epoch)``.

    Args:
        labels: training labels, int [N].
        seed: the training seed (not the split seed).

    Attributes:
        labels: int64 [N] on the CPU.
        counts: int64 [C] samples per class, C = max label + 1.
    """

    def __init__(self, labels: LabelsLike, *, seed: int) -> None:
        self.labels = _as_labels(labels)
        self.seed = int(seed)
        self.counts = torch.bincount(self.labels)
        # Per-class index lists without a Python loop: a stable sort groups the indices by class and
        # keeps each class's indices ascending; class c owns sorted[starts[c] : starts[c] + counts[c]].
        self._sorted = torch.argsort(self.labels, stable=True)
        self._starts = torch.cumsum(self.counts, 0) - self.counts

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def generator(self, epoch: int) -> torch.Generator:
        """A fresh CPU generator for ``epoch``, seeded from ``(seed, epoch)``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0 (got {epoch})")
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch))
        return g

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch``.

        Shape:
            int64 [len(self)] on the CPU; values are positions in the training split.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def class_indices(self, c: int) -> torch.Tensor:
        """The positions of class ``c``'s samples, ascending. Shape: int64 [n_c]."""
        start = int(self._starts[c])
        return self._sorted[start : start + int(self.counts[c])]


class InstanceSampler(Sampler):
    """Instance-balanced sampling: a random permutation of all N samples each epoch."""

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.labels), generator=self.generator(epoch))

    def __len__(self) -> int:
        return len(self.labels)


class ClassBalancedSampler(Sampler):
    """The class-aware sampler of docs/methods.md §0.5 (facebookresearch/classifier-balancing semantics).

    Classes are visited in a cyclic order reshuffled at every wrap; each visit emits ``k`` consecutive
    samples from that class's own cyclic index list, reshuffled at each wrap. One epoch holds
    ``n_max * C`` samples, C counting the classes that have at least one sample; the last visit is cut
    short when ``k`` does not divide that length. Over an epoch every class is visited
    ``floor(V / C)`` or ``ceil(V / C)`` times (V visits), so per-class frequencies differ by at most k.

    Deviation [ours]: the original keeps its cyclic iterators alive across epochs and shuffles with
    Python's unseeded ``random``; here every epoch starts fresh cycles from its own seeded generator, so
    an epoch can be rebuilt without replaying the ones before it.

    Args:
        labels: training labels, int [N].
        seed: the training seed.
        k: consecutive samples per class visit (4 in Decoupling's cRT/LWS, 1 in DLSA-CBS).
    """

    def __init__(self, labels: LabelsLike, *, seed: int, k: int = 1) -> None:
        super().__init__(labels, seed=seed)
        if k < 1:
            raise ConfigError(f"the class-balanced sampler needs k >= 1 samples per class visit (got k={k})")
        self.k = int(k)
        self._present = torch.nonzero(self.counts > 0).flatten()  # classes that can be visited
        self._length = int(self.counts.max()) * len(self._present)

    def __len__(self) -> int:
        return self._length

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        g = self.generator(epoch)
        k, n_cls = self.k, len(self._present)
        n_visits = -(-self._length // k)
        # Class visit order: consecutive independent permutations of the classes, one per wrap.
        wraps = -(-n_visits // n_cls)
        perms = torch.argsort(torch.rand(wraps, n_cls, generator=g), dim=1)
        visit_cls = self._present[perms.flatten()[:n_visits]]  # [V] class of each visit
        # Each visit owns output slots [v*k, v*k + k). Group the visits by class, keeping their time
        # order (stable sort): class c's slots, in time order, are then one contiguous run of this list,
        # to be filled with class c's cyclic stream.
        order = torch.argsort(visit_cls, stable=True)
        slots = (order[:, None] * k + torch.arange(k)).flatten()
        need = torch.bincount(visit_cls, minlength=self.num_classes) * k  # samples per class
        streams = []
        for c in self._present.tolist():  # once per epoch, not per step
            n_c, m_c = int(self.counts[c]), int(need[c])
            if m_c == 0:
                continue
            # ceil(m_c / n_c) independent reshuffles of the class's indices, read cyclically.
            cycles = torch.argsort(torch.rand(-(-m_c // n_c), n_c, generator=g), dim=1)
            streams.append(self.class_indices(c)[cycles.flatten()[:m_c]])
        out = torch.empty(n_visits * k, dtype=torch.int64)
        out[slots] = torch.cat(streams)
        return out[: self._length]


def class_probabilities(counts: torch.Tensor | np.ndarray, power: float) -> torch.Tensor:
    """Class sampling probabilities ``q_c ∝ n_c ** power`` (0 for empty classes).

    ``power`` 1 is instance-balanced, 0 class-balanced, 0.5 square-root sampling.

    Shape:
        counts: [C] -> float64 [C], summing to 1.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = torch.where(n > 0, n.clamp_min(1) ** power, torch.zeros_like(n))
    return w / w.sum()


class _ClassProbabilitySampler(Sampler):
    """N draws with replacement: a class from ``q(epoch)``, then a sample uniformly within that class."""

    def class_probs(self, epoch: int) -> torch.Tensor:
        """Class probabilities used in ``epoch``. Shape: float64 [C]."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        q = self.class_probs(epoch)
        g = self.generator(epoch)
        n = len(self.labels)
        cls = torch.multinomial(q, n, replacement=True, generator=g)
        n_c = self.counts[cls]
        # floor(u * n_c) is uniform on {0, ..., n_c - 1}; the clamp guards against u rounding up to 1.
        within = torch.minimum((torch.rand(n, generator=g, dtype=torch.float64) * n_c).long(), n_c - 1)
        return self._sorted[self._starts[cls] + within]


class PowerSampler(_ClassProbabilitySampler):
    """Class probabilities ``q_c ∝ n_c ** power``, uniform within a class, N draws with replacement.

    Args:
        labels: training labels, int [N].
        seed: the training seed.
        power: 1 = instance-balanced in expectation, 0 = class-balanced, 0.5 = square-root.
    """

    def __init__(self, labels: LabelsLike, *, seed: int, power: float) -> None:
        super().__init__(labels, seed=seed)
        if not math.isfinite(power):
            raise ConfigError(f"sampler power must be a finite number (got {power})")
        self.power = float(power)
        self._q = class_probabilities(self.counts, self.power)

    def class_probs(self, epoch: int) -> torch.Tensor:
        return self._q


class SquareRootSampler(PowerSampler):
    """Square-root sampling (Kang et al. 2020): ``q_c ∝ sqrt(n_c)``; N draws with replacement."""

    def __init__(self, labels: LabelsLike, *, seed: int) -> None:
        super().__init__(labels, seed=seed, power=0.5)


class ProgressiveSampler(_ClassProbabilitySampler):
    """Progressively-balanced sampling (Kang et al. 2020), N draws with replacement per epoch.

    ``q_c(t) = (1 - t/T) * q_c^IB + (t/T) * q_c^CB`` with t the (0-based) epoch, T = ``total_epochs``,
    ``q^IB = n_c / N`` and ``q^CB = 1 / C``. Epochs past T keep t/T = 1 (class-balanced).

    Args:
        labels: training labels, int [N].
        seed: the training seed.
        total_epochs: T, at least 1.
    """

    def __init__(self, labels: LabelsLike, *, seed: int, total_epochs: int) -> None:
        super().__init__(labels, seed=seed)
        if total_epochs < 1:
            raise ConfigError(f"the progressive sampler needs total_epochs >= 1 (got {total_epochs})")
        self.total_epochs = int(total_epochs)
        self._q_ib = class_probabilities(self.counts, 1.0)
        self._q_cb = class_probabilities(self.counts, 0.0)

    def class_probs(self, epoch: int) -> torch.Tensor:
        t = min(epoch / self.total_epochs, 1.0)
        return (1.0 - t) * self._q_ib + t * self._q_cb


SAMPLERS_REGISTRY = _REGISTRY
SAMPLERS_REGISTRY.register("instance", lambda labels, *, seed, k, total_epochs: InstanceSampler(labels, seed=seed))
SAMPLERS_REGISTRY.register("class_balanced",
                           lambda labels, *, seed, k, total_epochs: ClassBalancedSampler(labels, seed=seed, k=k))
SAMPLERS_REGISTRY.register("sqrt", lambda labels, *, seed, k, total_epochs: SquareRootSampler(labels, seed=seed))
SAMPLERS_REGISTRY.register("progressive", lambda labels, *, seed, k, total_epochs: ProgressiveSampler(
    labels, seed=seed, total_epochs=total_epochs))


def build_sampler(
    name: str, labels: LabelsLike, *, seed: int, k: int = 1, total_epochs: int = 1
) -> Sampler:
    """Build a sampler by its config name (``data.sampler``), from the sampler registry.

    Args:
        name: ``instance``, ``class_balanced``, ``sqrt``, ``progressive``, or a name registered with
            ``SAMPLERS.register(name, factory)``, ``factory(labels, *, seed, k, total_epochs) -> Sampler``.
        labels: training labels, int [N].
        seed: the training seed.
        k: ``class_balanced`` only: samples per class visit (``data.sampler_k``).
        total_epochs: ``progressive`` only: T (``train.epochs``).

    Raises:
        ConfigError: unknown name (with the closest valid one), or a bad k / total_epochs.
    """
    if name not in SAMPLERS_REGISTRY:
        names = SAMPLERS_REGISTRY.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"data.sampler must be one of {', '.join(names)} (got '{name}'{hint})")
    return SAMPLERS_REGISTRY.get(name)(labels, seed=seed, k=k, total_epochs=total_epochs)
