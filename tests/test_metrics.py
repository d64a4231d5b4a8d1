"""Metrics against scikit-learn and slow reference loops written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from longtail.metrics import (
    CalibrationBins,
    MetricAccumulator,
    calibration_bins,
    confusion_matrix,
    ece,
    evaluate_logits,
    per_class_accuracy,
    shot_group_accuracy,
)


def _data(n: int, c: int, seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) * scale
    logits[torch.arange(n), targets] += 1.5  # better than chance, so every metric is non-trivial
    return logits, targets


def _ref_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[list, list, list]:
    """Slow reference: bin i = (i/n, (i+1)/n], confidence 0 in bin 0."""
    count, csum, hsum = [0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for c, h in zip(conf.tolist(), correct.tolist()):
        for i in range(n_bins):
            lo, hi = i / n_bins, (i + 1) / n_bins
            if lo < c <= hi or (i == 0 and c == 0.0):
                count[i] += 1
                csum[i] += c
                hsum[i] += float(h)
                break
    return count, csum, hsum


def _ref_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    count, csum, hsum = _ref_bins(conf, correct, n_bins)
    total = 0.0
    for n_b, c_b, h_b in zip(count, csum, hsum):
        if n_b:
            total += abs(h_b / n_b - c_b / n_b) * n_b / len(conf)
    return 100.0 * total


# ---------------------------------------------------------------------------------------------------
# confusion matrix and per-class accuracy


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("n,c", [(1, 1), (50, 3), (400, 11)])
def test_confusion_matrix_matches_sklearn(n: int, c: int) -> None:
    rng = np.random.default_rng(n + c)
    t, p = rng.integers(0, c, n), rng.integers(0, c, n)
    cm = confusion_matrix(torch.from_numpy(p), t, c)
    assert cm.dtype == np.int64 and cm.shape == (c, c)
    np.testing.assert_array_equal(cm, sk_confusion_matrix(t, p, labels=list(range(c))))


def test_confusion_matrix_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\).*from 0 to 3"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 2\)"):
        confusion_matrix([-1, 1], [0, 1], 2)


def test_per_class_accuracy_loop_and_absent_class() -> None:
    rng = np.random.default_rng(3)
    c = 6
    t = rng.integers(0, c - 1, 200)  # class 5 never in the test set
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, c, 200))
    acc = per_class_accuracy(confusion_matrix(p, t, c))
    for k in range(c - 1):
        mask = t == k
        assert acc[k] == pytest.approx(100.0 * (p[mask] == k).mean(), abs=1e-12)
    assert math.isnan(acc[c - 1])
    with pytest.raises(ValueError, match="square"):
        per_class_accuracy(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------------
# shot groups


def test_shot_group_boundaries() -> None:
    # n = 101 Many; n = 100 and n = 20 Medium; n = 19 Few.
    out = shot_group_accuracy([10.0, 20.0, 40.0, 70.0], [101, 100, 20, 19])
    assert out == {"many": 10.0, "medium": 30.0, "few": 70.0}


def test_shot_group_unweighted_mean_over_present_classes_and_empty_group() -> None:
    counts = [5000, 900, 300, 60, 30]
    out = shot_group_accuracy([80.0, 60.0, float("nan"), 10.0, 30.0], counts)
    assert out["many"] == pytest.approx(70.0)  # NaN class excluded, not counted as 0
    assert out["medium"] == pytest.approx(20.0)
    assert out["few"] is None  # no class with n < 20: null, never 0
    # a group whose only classes are absent from the test set is empty too
    assert shot_group_accuracy([float("nan"), 50.0], [5, 500])["few"] is None
    with pytest.raises(ValueError, match="per_class has 2 classes but train_counts has 3"):
        shot_group_accuracy([1.0, 2.0], [1, 2, 3])


# ---------------------------------------------------------------------------------------------------
# calibration


def test_calibration_bins_and_ece_match_reference_including_edges() -> None:
    n_bins = 15
    rng = np.random.default_rng(5)
    edges = [i / n_bins for i in range(n_bins + 1)]  # exact boundaries belong to the lower bin
    conf = np.concatenate([rng.random(300), edges, [0.0, 1.0]])
    correct = rng.random(conf.size) < conf
    bins = calibration_bins(conf, correct, n_bins)
    count, csum, hsum = _ref_bins(conf, correct, n_bins)
    np.testing.assert_array_equal(bins.count, count)
    np.testing.assert_allclose(bins.conf_sum, csum, rtol=1e-12)
    np.testing.assert_allclose(bins.correct_sum, hsum, rtol=1e-12)
    assert bins.count[0] >= 3 and bins.count[1] >= 2  # 0.0 twice + 1/15 in bin 0; 2/15 in bin 1
    assert ece(bins) == pytest.approx(_ref_ece(conf, correct, n_bins), rel=1e-10)


def test_ece_closed_forms() -> None:
    # all at 0.8 and 80 % right: perfectly calibrated
    assert ece(calibration_bins(np.full(10, 0.8), np.arange(10) < 8)) == pytest.approx(0.0, abs=1e-12)
    # all at 0.9 and all wrong: ECE = 90 %
    assert ece(calibration_bins(np.full(7, 0.9), np.zeros(7, bool))) == pytest.approx(90.0)


def test_calibration_merge_equals_concatenation() -> None:
    rng = np.random.default_rng(6)
    conf, correct = rng.random(100), rng.random(100) < 0.5
    whole = calibration_bins(conf, correct, 10)
    merged = calibration_bins(conf[:37], correct[:37], 10) + calibration_bins(conf[37:], correct[37:], 10)
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.conf_sum, whole.conf_sum, rtol=1e-12)
    np.testing.assert_array_equal(merged.correct_sum, whole.correct_sum)
    with pytest.raises(ValueError, match="cannot merge 10 bins with 15 bins"):
        whole.merge(calibration_bins(conf, correct, 15))


def test_calibration_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\].*softmax probabilities"):
        calibration_bins([0.5, 1.5], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        calibration_bins([0.5], [1, 0])
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        calibration_bins([0.5], [1], n_bins=0)
    empty = CalibrationBins(np.zeros(3, np.int64), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="zero samples"):
        ece(empty)


# ---------------------------------------------------------------------------------------------------
# accumulator


def test_evaluate_logits_matches_sklearn_and_reference_ece() -> None:
    c = 10
    logits, targets = _data(300, c, seed=1)
    counts = [500, 300, 200, 120, 100, 60, 20, 19, 10, 5]
    out = evaluate_logits(logits, targets, counts)
    y, s = targets.numpy(), logits.numpy()
    assert out["top1"] == pytest.approx(100 * accuracy_score(y, s.argmax(1)), abs=1e-10)
    assert out["top5"] == pytest.approx(100 * top_k_accuracy_score(y, s, k=5, labels=list(range(c))), abs=1e-10)
    assert out["num_samples"] == 300
    ref_acc = per_class_accuracy(sk_confusion_matrix(y, s.argmax(1), labels=list(range(c))))
    np.testing.assert_allclose(out["per_class"], ref_acc, rtol=1e-12)
    ids = {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    for g, cls in ids.items():
        assert out[g] == pytest.approx(np.mean(ref_acc[cls]), abs=1e-10)
    probs = torch.softmax(logits.float(), 1).numpy()
    conf = probs.max(1).astype(np.float64)
    assert out["ece"] == pytest.approx(_ref_ece(conf, s.argmax(1) == y, 15), rel=1e-9)
    cal = out["calibration"]
    assert cal["bins"] == 15 and sum(cal["count"]) == 300
    for n_b, cf, ac in zip(cal["count"], cal["confidence"], cal["accuracy"]):
        assert (n_b == 0) == (cf is None) == (ac is None)
        if n_b:
            assert 0.0 <= cf <= 1.0 and 0.0 <= ac <= 100.0


def test_top1_equals_mean_per_class_on_balanced_set() -> None:
    c = 7
    targets = torch.arange(c).repeat(30)
    logits, _ = _data(targets.numel(), c, seed=2)
    logits[torch.arange(targets.numel()), targets] += 1.0
    out = evaluate_logits(logits, targets, [200] * c)
    assert 0 < out["top1"] < 100
    assert out["top1"] == pytest.approx(float(np.mean(out["per_class"])), abs=1e-10)
    assert out["medium"] is None and out["few"] is None


def test_absent_class_is_none_and_small_c_top5() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5]])
    targets = torch.tensor([0, 0, 1])  # class 2 never appears
    out = evaluate_logits(logits, targets, [150, 50, 10])
    assert out["per_class"] == [50.0, 0.0, None]
    assert out["top1"] == pytest.approx(100 / 3)
    assert out["top5"] == 100.0  # C = 3 < 5: top-5 is over all 3 classes
    assert out["many"] == 50.0 and out["medium"] == 0.0 and out["few"] is None


def test_accumulating_batches_equals_one_batch_exactly() -> None:
    c = 10
    logits, targets = _data(257, c, seed=4)
    whole = MetricAccumulator(c)
    whole.update(logits, targets)
    parts = MetricAccumulator(c)
    for chunk_l, chunk_t in zip(logits.split(64), targets.split(64)):
        parts.update(chunk_l, chunk_t)
    parts.update(logits[:0], targets[:0])  # an empty batch changes nothing
    counts = list(range(300, 0, -30))
    assert parts.compute(counts) == whole.compute(counts)
    for name, t in whole.state().items():
        assert torch.equal(parts.state()[name], t), name


def test_state_sum_reduction_matches_single_process() -> None:
    c = 5
    logits, targets = _data(120, c, seed=7)
    whole, a, b = MetricAccumulator(c, ece_bins=10), MetricAccumulator(c, ece_bins=10), MetricAccumulator(c, ece_bins=10)
    whole.update(logits, targets)
    a.update(logits[:50], targets[:50])
    b.update(logits[50:], targets[50:])
    # what an all-reduce(SUM) of every state tensor would give
    reduced = {k: a.state()[k] + b.state()[k] for k in a.state()}
    a.load_state(reduced)
    assert a.compute([100] * c) == whole.compute([100] * c)
    np.testing.assert_array_equal(a.confusion(), confusion_matrix(logits.argmax(1), targets, c))
    with pytest.raises(ValueError, match="state must have keys"):
        a.load_state({"confusion": reduced["confusion"]})
    bad = dict(reduced, calib_count=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"calib_count.*shape \(10,\)"):
        a.load_state(bad)


def test_bf16_logits_use_float32_softmax() -> None:
    logits, targets = _data(64, 4, seed=8)
    low = logits.to(torch.bfloat16)
    out = evaluate_logits(low, targets, [50] * 4)
    ref = evaluate_logits(low.float(), targets, [50] * 4)
    assert out == ref


def test_accumulator_bad_inputs() -> None:
    acc = MetricAccumulator(4)
    with pytest.raises(ValueError, match=r"logits must have shape \[B, 4\] \(got \(3, 5\)\)"):
        acc.update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \[3\]"):
        acc.update(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\).*from 0 to 4"):
        acc.update(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="floating point"):
        acc.update(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no samples"):
        acc.compute([1, 2, 3, 4])
    acc.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="train_counts has 3 classes but the accumulator has 4"):
        acc.compute([1, 2, 3])
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        MetricAccumulator(0)
    with pytest.raises(ValueError, match="positive integers"):
        MetricAccumulator(3, k=(0,))


def test_without_confusion_matrix_the_metrics_are_the_same() -> None:
    c = 12
    logits, targets = _data(300, c, seed=9)
    counts = list(range(240, 0, -20))
    full, lean = MetricAccumulator(c, keep_confusion=True), MetricAccumulator(c, keep_confusion=False)
    for chunk_l, chunk_t in zip(logits.split(70), targets.split(70)):
        full.update(chunk_l, chunk_t)
        lean.update(chunk_l, chunk_t)
    assert lean.compute(counts) == full.compute(counts)
    assert "confusion" in full.state() and "confusion" not in lean.state()
    with pytest.raises(ValueError, match="keep_confusion=True"):
        lean.confusion()
    # the per-class statistics are the confusion matrix's row sums and diagonal
    cm = full.confusion()
    np.testing.assert_array_equal(lean.state()["class_total"].numpy(), cm.sum(1))
    np.testing.assert_array_equal(lean.state()["class_correct"].numpy(), np.diag(cm))


def test_confusion_matrix_is_dropped_above_1000_classes() -> None:
    assert MetricAccumulator(1000).keep_confusion and not MetricAccumulator(1001).keep_confusion
    acc = MetricAccumulator(8142)  # iNaturalist 2018: O(C) state, not a 530 MB matrix
    assert sum(t.numel() for t in acc.state().values()) < 20_000
    logits = torch.randn(6, 8142)
    targets = logits.argmax(1)
    targets[0] = (targets[0] + 1) % 8142
    acc.update(logits, targets)
    out = acc.compute(np.ones(8142))
    assert out["top1"] == pytest.approx(500 / 6) and out["num_samples"] == 6
