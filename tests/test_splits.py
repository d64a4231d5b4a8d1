"""The long-tailed split recipe (PROTOCOL.md §2, §3, §5, §8) against the protocol's tables."""

from __future__ import annotations

import numpy as np
import pytest

from longtail.data.build import split_counts, split_info
from longtail.data.splits import (check_stored_split, indices_sha256, lt_counts, select_lt_indices,
                                  shot_group_ids, shot_summary, stored_splits)
from longtail.errors import ConfigError, DataError

CIFAR10 = {
    10: (20431, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], (10, 0, 0)),
    50: (13996, [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], (9, 1, 0)),
    100: (12406, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], (8, 2, 0)),
    200: (11203, [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25], (7, 3, 0)),
}
CIFAR100 = {10: (19573, (69, 31, 0)), 50: (12608, (41, 41, 18)), 100: (10847, (35, 35, 30)),
            200: (9502, (30, 31, 39))}
TINY = {10: (39072, (139, 61, 0)), 50: (25082, (82, 82, 36)), 100: (21549, (70, 70, 60)),
        200: (18836, (61, 60, 79))}


def shots(counts):
    s = shot_summary(counts)
    return s["many"], s["medium"], s["few"]


@pytest.mark.parametrize("rho", sorted(CIFAR10))
def test_cifar10_counts(rho):
    total, counts, groups = CIFAR10[rho]
    got = lt_counts(5000, 10, rho)
    assert got == counts and sum(got) == total and shots(got) == groups


@pytest.mark.parametrize("rho", sorted(CIFAR100))
def test_cifar100_counts(rho):
    total, groups = CIFAR100[rho]
    got = lt_counts(500, 100, rho)
    assert sum(got) == total and shots(got) == groups and got[0] == 500
    assert got == sorted(got, reverse=True)


def test_cifar100_edges():
    assert lt_counts(500, 100, 100)[:3] == [500, 477, 455] and lt_counts(500, 100, 100)[-1] == 5
    assert lt_counts(500, 100, 200)[-1] == 2  # 2.5 truncated: realised ratio 250
    assert lt_counts(500, 100, 10)[-1] == 50 and shot_group_ids([50])[0] == 1  # last class Medium
    assert lt_counts(5000, 10, 50)[-1] == 100 and shot_group_ids([100])[0] == 1


@pytest.mark.parametrize("rho", sorted(TINY))
def test_tiny_counts(rho):
    total, groups = TINY[rho]
    got = split_counts("tinyimagenet", rho)
    assert sum(got) == total and shots(got) == groups and got[0] == 500


def test_shot_boundaries():
    assert shot_group_ids([101, 100, 20, 19]).tolist() == [0, 1, 1, 2]


def test_reference_selection_equals_recipe():
    """The selection equals the literal protocol steps with the legacy global RNG."""
    rng = np.random.RandomState(123)
    labels = rng.randint(0, 10, size=3000)
    counts = lt_counts(int(np.bincount(labels).min()), 10, 10)
    got = select_lt_indices(labels, counts, 0)
    np.random.seed(0)
    ref = []
    for c in range(10):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        idx = np.array(idx)
        np.random.shuffle(idx)
        ref.extend(idx[: counts[c]].tolist())
    assert got.tolist() == ref


def test_nested_across_imbalance():
    labels = np.repeat(np.arange(10), 500)
    sets = {r: set(select_lt_indices(labels, lt_counts(500, 10, r)).tolist()) for r in (10, 50, 100)}
    assert sets[100] <= sets[50] <= sets[10]


def test_step_profile():
    assert lt_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    with pytest.raises(ConfigError):
        lt_counts(500, 10, 10, "linear")


def test_bad_imbalance_and_too_few_images():
    with pytest.raises(ConfigError, match=">= 1"):
        lt_counts(500, 10, 0.5)
    with pytest.raises(DataError, match="class 1 has"):
        select_lt_indices(np.array([0] * 10 + [1] * 2), [5, 5])


def test_stored_split_check():
    labels = np.repeat(np.arange(200), 500)
    idx = select_lt_indices(labels, lt_counts(500, 200, 100))
    assert check_stored_split("tinyimagenet", 100, 0, "exp", idx) is True
    with pytest.raises(DataError, match="differs from the stored one"):
        check_stored_split("tinyimagenet", 100, 0, "exp", idx[:-1])
    assert check_stored_split("tinyimagenet", 3.5, 0, "exp", idx) is False  # nothing stored
    assert stored_splits()["cifar10"]["exp_r100_s0"].total == 12406


def test_digits_split_matches_stored():
    from longtail.data.digits import load_digits_lt

    for rho in (1, 10, 100):
        train, test, idx = load_digits_lt(rho)
        assert check_stored_split("digits", rho, 0, "exp", idx)
        assert len(test) == 500 and np.bincount(test.labels).tolist() == [50] * 10
        assert np.bincount(train.labels, minlength=10).tolist() == lt_counts(120, 10, rho)
        assert not set(idx.tolist()) & set(range(0))
    info = split_info("digits", 10)
    assert info["shots"] == {"many": 1, "medium": 7, "few": 2}


def test_indices_sha256_is_order_free():
    a = np.array([3, 1, 2])
    assert indices_sha256(a) == indices_sha256(np.sort(a))
