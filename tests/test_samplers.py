"""Samplers: determinism in (seed, epoch), the class-aware semantics of METHODS.md §0.5, and the class
distributions of the square-root and progressive samplers."""

import math

import numpy as np
import pytest
import torch

from longtail.data.samplers import (
    SAMPLERS,
    ClassBalancedSampler,
    InstanceSampler,
    PowerSampler,
    ProgressiveSampler,
    SquareRootSampler,
    build_sampler,
    class_probabilities,
    mix_seed,
    shard,
)
from longtail.errors import ConfigError

COUNTS = [50, 23, 9, 4, 1]


def make_labels(counts, shuffle_seed=0):
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.RandomState(shuffle_seed).permutation(labels)  # classes interleaved, as in real splits


def assert_frequencies(idx, labels, q, z=5.0):
    """Empirical class frequencies of the drawn indices match q within z standard errors."""
    cls = torch.as_tensor(labels)[idx]
    n = len(cls)
    freq = torch.bincount(cls, minlength=len(q)).double() / n
    q = torch.as_tensor(q, dtype=torch.float64)
    se = torch.sqrt(q * (1 - q) / n).clamp_min(1e-12)
    assert torch.all((freq - q).abs() <= z * se + 1e-12), (freq, q)


# ---------------------------------------------------------------------------------------------------
# mix_seed and shard


def test_mix_seed_gives_distinct_seeds():
    seeds = {mix_seed(s, e, t, r) for s in range(5) for e in range(10) for t in range(20) for r in range(4)}
    assert len(seeds) == 5 * 10 * 20 * 4
    assert all(0 <= x < 2**63 for x in seeds)
    # order and arity matter; negative values are accepted
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert mix_seed(1, 2) != mix_seed(1, 2, 0)
    assert mix_seed(0) != mix_seed(0, 0)
    assert mix_seed(-1, 3) == mix_seed(-1, 3) != mix_seed(1, 3)


def _ref_splitmix64(x):
    m = 2**64
    x = (x + 0x9E3779B97F4A7C15) % m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % m
    return x ^ (x >> 31)


def test_mix_seed_matches_reference_splitmix64():
    # This pins the hash: changing it would silently change every run's sampling and augmentation, and
    # resuming an older checkpoint would no longer be bit-exact.
    # Reference: fold the values through SplitMix64, starting from the hash of their count.
    for values in [(0,), (0, 0), (7, 3, 11, 1), (123456789, 2**40)]:
        h = _ref_splitmix64(len(values))
        for v in values:
            h = _ref_splitmix64(h ^ v)
        assert mix_seed(*values) == h >> 1
    # Known first output of SplitMix64 seeded with 0 (Vigna's reference implementation).
    assert _ref_splitmix64(0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shard_is_a_contiguous_partition_in_batch_order(world_size):
    batch = torch.tensor([9, 4, 7, 1, 0, 3, 8])
    parts = [shard(batch, r, world_size) for r in range(world_size)]
    assert torch.cat(parts).tolist() == batch.tolist()  # the all-gather order is the batch order
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("rank,world_size", [(2, 2), (-1, 2), (0, 0)])
def test_shard_rejects_bad_rank(rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        shard(torch.arange(4), rank, world_size)


# ---------------------------------------------------------------------------------------------------
# every sampler


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_is_deterministic_in_seed_and_epoch(name):
    labels = make_labels(COUNTS)
    a = build_sampler(name, labels, seed=3, k=2, total_epochs=4)
    b = build_sampler(name, torch.as_tensor(labels), seed=3, k=2, total_epochs=4)
    e1 = a.epoch_indices(1)
    assert e1.dtype == torch.int64 and e1.device.type == "cpu" and e1.shape == (len(a),)
    assert int(e1.min()) >= 0 and int(e1.max()) < len(labels)
    assert torch.equal(e1, b.epoch_indices(1))
    assert torch.equal(e1, a.epoch_indices(1))  # no hidden state carried between calls
    assert not torch.equal(e1, a.epoch_indices(2))
    assert not torch.equal(e1, build_sampler(name, labels, seed=4, k=2, total_epochs=4).epoch_indices(1))


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_leaves_global_rng_alone(name):
    labels = make_labels(COUNTS)
    state = torch.get_rng_state()
    build_sampler(name, labels, seed=0).epoch_indices(0)
    assert torch.equal(state, torch.get_rng_state())


def test_instance_sampler_is_a_permutation():
    labels = make_labels(COUNTS)
    s = InstanceSampler(labels, seed=0)
    assert len(s) == len(labels)
    for e in range(3):
        assert torch.equal(torch.sort(s.epoch_indices(e)).values, torch.arange(len(labels)))


@pytest.mark.parametrize(
    "labels,msg",
    [
        (np.array([0.0, 1.0]), "integers"),
        (np.array([0, -1, 2]), ">= 0"),
        (np.zeros((2, 2), dtype=np.int64), "1-D"),
        (np.zeros(0, dtype=np.int64), "non-empty"),
    ],
)
def test_bad_labels_are_rejected(labels, msg):
    with pytest.raises(ValueError, match=msg):
        InstanceSampler(labels, seed=0)


def test_negative_epoch_is_rejected():
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        InstanceSampler([0, 1], seed=0).epoch_indices(-1)


# ---------------------------------------------------------------------------------------------------
# class-balanced (METHODS.md §0.5)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_class_balanced_semantics(k):
    counts = [13, 5, 7, 2, 1]
    labels = make_labels(counts, shuffle_seed=1)
    s = ClassBalancedSampler(labels, seed=5, k=k)
    n_cls, n_max = len(counts), max(counts)
    assert len(s) == n_max * n_cls
    for epoch in range(3):
        idx = s.epoch_indices(epoch)
        assert len(idx) == n_max * n_cls
        cls = torch.as_tensor(labels)[idx].tolist()
        # per-class frequencies are uniform within k
        freq = np.bincount(cls, minlength=n_cls)
        assert freq.max() - freq.min() <= k
        # each visit is a run of k consecutive samples of one class (the last one may be cut short)
        visits = [cls[v : v + k] for v in range(0, len(cls), k)]
        assert all(len(set(run)) == 1 for run in visits)
        assert all(len(run) == k for run in visits[:-1])
        # the visit order cycles through all classes before any repeats, reshuffled at each wrap
        visit_cls = [run[0] for run in visits]
        wraps = [visit_cls[w : w + n_cls] for w in range(0, len(visit_cls), n_cls)]
        assert all(len(set(w)) == len(w) for w in wraps)
        assert all(sorted(w) == list(range(n_cls)) for w in wraps[:-1])
        # each class's samples cycle through all of its indices before repeating
        for c, n_c in enumerate(counts):
            mine = [int(i) for i in idx if labels[i] == c]
            own = sorted(np.flatnonzero(labels == c).tolist())
            for start in range(0, len(mine), n_c):
                block = mine[start : start + n_c]
                assert len(set(block)) == len(block) and set(block) <= set(own)
                if len(block) == n_c:
                    assert sorted(block) == own


def test_class_balanced_reshuffles_each_wrap():
    labels = make_labels([40, 40, 4])
    idx = ClassBalancedSampler(labels, seed=0, k=1).epoch_indices(0)
    wraps = torch.as_tensor(labels)[idx].view(-1, 3)  # 40 wraps of 3 class visits
    assert len({tuple(w) for w in wraps.tolist()}) > 1
    # class 2 (4 samples) is visited 40 times: 10 cycles through its list, not all in the same order
    mine = [int(i) for i in idx if labels[i] == 2]
    cycles = {tuple(mine[c : c + 4]) for c in range(0, 40, 4)}
    assert len(cycles) > 1


def test_class_balanced_skips_empty_classes():
    labels = np.array([0, 0, 0, 2, 2, 4])  # classes 1 and 3 have no samples
    s = ClassBalancedSampler(labels, seed=0)
    assert len(s) == 3 * 3
    cls = labels[s.epoch_indices(0).numpy()]
    assert np.bincount(cls, minlength=5).tolist() == [3, 0, 3, 0, 3]


def test_class_balanced_rejects_bad_k():
    with pytest.raises(ConfigError, match="k >= 1"):
        ClassBalancedSampler([0, 1], seed=0, k=0)


# ---------------------------------------------------------------------------------------------------
# square-root, power and progressive


def test_class_probabilities():
    counts = torch.tensor([100, 25, 0, 4])
    q = class_probabilities(counts, 0.5)
    ref = torch.tensor([10.0, 5.0, 0.0, 2.0], dtype=torch.float64) / 17.0
    assert torch.allclose(q, ref)
    assert torch.allclose(class_probabilities(counts, 0.0), torch.tensor([1, 1, 0, 1], dtype=torch.float64) / 3)
    assert torch.allclose(class_probabilities(counts, 1.0), counts.double() / 129)


def test_sqrt_sampler_matches_target_distribution():
    counts = [400, 100, 25, 9, 1]
    labels = make_labels(counts)
    s = SquareRootSampler(labels, seed=0)
    assert len(s) == len(labels)
    idx = torch.cat([s.epoch_indices(e) for e in range(300)])  # 160k draws
    sq = np.sqrt(counts)
    assert_frequencies(idx, labels, sq / sq.sum())
    # uniform within a class: every index of class 1 (100 samples) is drawn about equally often
    hits = torch.bincount(idx, minlength=len(labels))[torch.as_tensor(labels == 1)].double()
    expected = len(idx) * sq[1] / sq.sum() / counts[1]
    assert torch.all((hits - expected).abs() <= 5 * math.sqrt(expected))


def test_power_sampler_zero_is_class_balanced_in_expectation():
    counts = [300, 30, 3]
    labels = make_labels(counts)
    s = PowerSampler(labels, seed=1, power=0.0)
    idx = torch.cat([s.epoch_indices(e) for e in range(200)])
    assert_frequencies(idx, labels, [1 / 3] * 3)


def test_power_sampler_rejects_nan():
    with pytest.raises(ConfigError, match="finite"):
        PowerSampler([0, 1], seed=0, power=float("nan"))


def test_progressive_sampler_interpolates_instance_to_class_balanced():
    counts = [300, 60, 20, 4]
    labels = make_labels(counts)
    total = 10
    s = ProgressiveSampler(labels, seed=2, total_epochs=total)
    n = np.array(counts, dtype=np.float64)
    q_ib, q_cb = n / n.sum(), np.full(4, 0.25)
    for t in (0, 3, total, total + 5):
        frac = min(t / total, 1.0)
        target = (1 - frac) * q_ib + frac * q_cb
        assert np.allclose(s.class_probs(t).numpy(), target)
        # many draws at this epoch's probabilities: repeat the epoch's sampler with other seeds
        idx = torch.cat([ProgressiveSampler(labels, seed=r, total_epochs=total).epoch_indices(t) for r in range(400)])
        assert_frequencies(idx, labels, target)
    assert np.allclose(s.class_probs(0).numpy(), q_ib)  # t = 0: instance-balanced
    assert np.allclose(s.class_probs(total).numpy(), q_cb)  # t = T: class-balanced


def test_progressive_rejects_bad_total_epochs():
    with pytest.raises(ConfigError, match="total_epochs >= 1"):
        ProgressiveSampler([0, 1], seed=0, total_epochs=0)


# ---------------------------------------------------------------------------------------------------
# build_sampler


def test_build_sampler_types_and_arguments():
    labels = make_labels(COUNTS)
    assert type(build_sampler("instance", labels, seed=0)) is InstanceSampler
    cb = build_sampler("class_balanced", labels, seed=0, k=4)
    assert type(cb) is ClassBalancedSampler and cb.k == 4
    assert type(build_sampler("sqrt", labels, seed=0)) is SquareRootSampler
    pg = build_sampler("progressive", labels, seed=0, total_epochs=7)
    assert type(pg) is ProgressiveSampler and pg.total_epochs == 7


def test_build_sampler_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'class_balanced'"):
        build_sampler("class_balance", [0, 1], seed=0)
    with pytest.raises(ConfigError, match="must be one of"):
        build_sampler("zzz", [0, 1], seed=0)
