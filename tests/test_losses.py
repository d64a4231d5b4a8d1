"""Baseline losses vs slow float64 references, METHODS.md §1 invariants, dtypes, devices, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.losses import (
    BalancedSoftmaxLoss,
    ClassBalancedLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    ldam_margins,
    posthoc_adjust,
)

SIZES = [(1, 2), (1, 7), (5, 3), (16, 10), (33, 17)]


# ----------------------------------------------------------------------------------------------------
# slow references: one sample at a time, one class at a time, float64 torch scalars (so autograd works)


def ref_ce_row(z: torch.Tensor, y: int) -> torch.Tensor:
    """−z_y + log Σ_c exp z_c, with the max subtracted for stability."""
    m = max(z[c].item() for c in range(len(z)))
    total = sum(torch.exp(z[c] - m) for c in range(len(z)))
    return -z[y] + m + torch.log(total)


def ref_weighted_mean(losses: list, targets: torch.Tensor, weight) -> torch.Tensor:
    if weight is None:
        return sum(losses) / len(losses)
    num = sum(weight[int(y)] * l for l, y in zip(losses, targets))
    den = sum(weight[int(y)] for y in targets)
    return num / den


def ref_ce(s, targets, weight=None):
    return ref_weighted_mean([ref_ce_row(s[i], int(targets[i])) for i in range(len(s))], targets, weight)


def ref_focal(s, targets, gamma, weight=None):
    losses = []
    for i in range(len(s)):
        logp = -ref_ce_row(s[i], int(targets[i]))
        losses.append(-((1 - torch.exp(logp)) ** gamma) * logp)
    return ref_weighted_mean(losses, targets, weight)


def ref_focal_ldam(s, targets, gamma, weight=None):
    """kaidic/LDAM-DRW: ce = weighted unreduced CE, p = exp(−ce), mean of (1 − p)^γ ce."""
    out = 0.0
    for i in range(len(s)):
        y = int(targets[i])
        ce = ref_ce_row(s[i], y) * (1.0 if weight is None else weight[y])
        out = out + (1 - torch.exp(-ce)) ** gamma * ce
    return out / len(s)


def ref_cb_weights(counts, beta):
    w = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [x * len(counts) / sum(w) for x in w]


def ref_ldam(s, targets, counts, max_margin, scale, weight=None):
    raw = [n ** -0.25 for n in counts]
    delta = [max_margin * r / max(raw) for r in raw]
    losses = []
    for i in range(len(s)):
        y = int(targets[i])
        cos = s[i] / scale
        z = torch.stack([scale * (cos[c] - (delta[c] if c == y else 0.0)) for c in range(len(cos))])
        losses.append(ref_ce_row(z, y))
    return ref_weighted_mean(losses, targets, weight)


def ref_shifted_ce(s, targets, shift):
    losses = []
    for i in range(len(s)):
        z = torch.stack([s[i, c] + shift[c] for c in range(s.shape[1])])
        losses.append(ref_ce_row(z, int(targets[i])))
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------------------
# helpers


def make_batch(b, c, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed + 100 * b + c)
    logits = spread * torch.randn(b, c, generator=g, dtype=torch.float64)
    targets = torch.randint(0, c, (b,), generator=g)
    weight = 0.1 + 2 * torch.rand(c, generator=g, dtype=torch.float64)
    counts = torch.randint(1, 500, (c,), generator=g).tolist()
    return logits, targets, weight, counts


def check_value_and_grad(loss_fn, ref_fn, logits64):
    """loss_fn on float32 logits matches ref_fn on float64 logits, value and gradient."""
    x32 = logits64.float().requires_grad_(True)
    out = loss_fn(x32)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    x64 = logits64.clone().requires_grad_(True)
    ref = ref_fn(x64)
    ref.backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# each loss against its reference


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_reference(b, c, weighted):
    s, y, w, _ = make_batch(b, c)
    w = w if weighted else None
    loss = CrossEntropyLoss(weight=w)
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_ce(x, y, w), s)


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_matches_reference(b, c, gamma, weighted):
    s, y, w, _ = make_batch(b, c)
    w = w if weighted else None
    loss = FocalLoss(gamma=gamma, weight=w)
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_focal(x, y, gamma, w), s)


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_ldam_parity_matches_literal_ldam_formula(b, c, gamma):
    s, y, w, _ = make_batch(b, c, spread=1.0)
    loss = FocalLoss(gamma=gamma, weight=w, parity="ldam")
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_focal_ldam(x, y, gamma, w), s)


def test_focal_parities_differ_only_with_weights():
    s, y, w, _ = make_batch(16, 10)
    s = s.float()
    unweighted = [FocalLoss(1.0, parity=p)(s, y) for p in ("default", "ldam")]
    torch.testing.assert_close(unweighted[0], unweighted[1])
    weighted = [FocalLoss(1.0, weight=w, parity=p)(s, y) for p in ("default", "ldam")]
    assert abs(weighted[0].item() - weighted[1].item()) > 1e-3


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("kind", ["ce", "focal"])
@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_class_balanced_matches_reference(b, c, kind, beta):
    s, y, _, counts = make_batch(b, c)
    w = torch.tensor(ref_cb_weights(counts, beta), dtype=torch.float64)
    # the normalised reduction (Σw·L/Σw); the default, Σw·L/B, is checked in test_cb_parity.py
    loss = ClassBalancedLoss(counts, beta=beta, loss=kind, gamma=2.0, reduction="normalized")
    torch.testing.assert_close(loss.weight.double(), w, rtol=1e-6, atol=0)
    ref = (lambda x: ref_ce(x, y, w)) if kind == "ce" else (lambda x: ref_focal(x, y, 2.0, w))
    check_value_and_grad(lambda x: loss(x, y), ref, s)


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_matches_reference(b, c, weighted):
    _, y, w, counts = make_batch(b, c)
    g = torch.Generator().manual_seed(b * c)
    s = 30.0 * (2 * torch.rand(b, c, generator=g, dtype=torch.float64) - 1)  # σ·cos with cos in [−1, 1]
    w = w if weighted else None
    loss = LDAMLoss(counts, max_margin=0.5, scale=30.0, weight=w)
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_ldam(x, y, counts, 0.5, 30.0, w), s)


@pytest.mark.parametrize("b,c", SIZES)
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_matches_reference(b, c, tau):
    s, y, _, counts = make_batch(b, c)
    shift = [tau * math.log(n / sum(counts)) for n in counts]
    loss = LogitAdjustedLoss(counts, tau=tau)
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_shifted_ce(x, y, shift), s)


@pytest.mark.parametrize("b,c", SIZES)
def test_balanced_softmax_matches_reference(b, c):
    s, y, _, counts = make_batch(b, c)
    shift = [math.log(n) for n in counts]
    loss = BalancedSoftmaxLoss(counts)
    check_value_and_grad(lambda x: loss(x, y), lambda x: ref_shifted_ce(x, y, shift), s)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_posthoc_adjust_matches_reference(tau):
    s, _, _, counts = make_batch(4, 6)
    out = posthoc_adjust(s.float(), counts, tau)
    n = sum(counts)
    ref = [[s[i, c].item() - tau * math.log(counts[c] / n) for c in range(6)] for i in range(4)]
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------------
# METHODS.md §1 invariants


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_equals_ce(weighted):
    s, y, w, _ = make_batch(16, 10)
    w = w if weighted else None
    torch.testing.assert_close(FocalLoss(0.0, weight=w)(s, y), CrossEntropyLoss(w)(s, y))


def test_focal_ldam_parity_gamma_zero_is_unnormalised_weighted_mean():
    # Pitfall 2: LDAM's batch mean is Σ w_y CE_i / B, not Σ w_y CE_i / Σ w_y.
    s, y, w, _ = make_batch(16, 10)
    s = s.float()
    got = FocalLoss(0.0, weight=w, parity="ldam")(s, y)
    torch.testing.assert_close(got, F.cross_entropy(s, y, weight=w.float(), reduction="none").mean())


def test_focal_gradient_finite_when_confident():
    # p_y rounds to 1 in float32; (1 − p)^γ with γ < 1 has an infinite slope there.
    logits = torch.tensor([[60.0, 0.0, -5.0]], requires_grad=True)
    for parity in ("default", "ldam"):
        loss = FocalLoss(0.5, weight=torch.ones(3), parity=parity)(logits, torch.tensor([0]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
        logits.grad = None


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_class_balanced_beta_zero_equals_unweighted(kind):
    s, y, _, counts = make_batch(16, 10)
    assert torch.equal(class_balanced_weights(counts, 0.0), torch.ones(10))
    expected = CrossEntropyLoss()(s, y) if kind == "ce" else FocalLoss(1.0)(s, y)
    torch.testing.assert_close(ClassBalancedLoss(counts, beta=0.0, loss=kind)(s, y), expected)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_sum_to_c_and_decrease_with_count(beta):
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50, 50, 1]
    w = class_balanced_weights(counts, beta)
    assert w.dtype == torch.float32 and w.shape == (12,)
    assert w.sum().item() == pytest.approx(12.0, rel=1e-6)
    assert all(w[i] <= w[i + 1] + 1e-7 for i in range(11))  # counts are non-increasing
    assert w[9] == w[10]  # equal counts, equal weights
    if beta >= 0.9:
        assert w[-1] > w[0]


def test_ldam_margins_max_and_power_law():
    counts = [5000, 500, 50, 5]
    m = ldam_margins(counts, 0.5)
    assert m.max().item() == pytest.approx(0.5) and m.argmax().item() == 3
    k = [m[i].item() * counts[i] ** 0.25 for i in range(4)]  # Δ_c·n_c^(1/4) is the constant K
    assert max(k) - min(k) < 1e-6
    assert m[2].item() / m[3].item() == pytest.approx(10 ** -0.25, rel=1e-6)


def test_ldam_zero_margin_equals_ce_on_scaled_cosine():
    s, y, w, counts = make_batch(16, 10)
    s = 30.0 * torch.tanh(s).float()
    torch.testing.assert_close(LDAMLoss(counts, max_margin=0.0)(s, y), CrossEntropyLoss()(s, y))
    torch.testing.assert_close(LDAMLoss(counts, max_margin=0.0, weight=w)(s, y), CrossEntropyLoss(w)(s, y))


def test_ldam_margin_only_raises_the_loss():
    s, y, _, counts = make_batch(16, 10)
    s = 30.0 * torch.tanh(s).float()
    assert LDAMLoss(counts, 0.5)(s, y) > LDAMLoss(counts, 0.0)(s, y)


def test_la_and_bs_with_uniform_counts_equal_ce():
    s, y, _, _ = make_batch(16, 10)
    ce = CrossEntropyLoss()(s, y)
    torch.testing.assert_close(LogitAdjustedLoss([37] * 10, tau=1.0)(s, y), ce)
    torch.testing.assert_close(LogitAdjustedLoss([37] * 10, tau=2.5)(s, y), ce)
    torch.testing.assert_close(BalancedSoftmaxLoss([37] * 10)(s, y), ce)


@pytest.mark.parametrize("b,c", SIZES)
def test_balanced_softmax_equals_la_tau_one(b, c):
    s, y, _, counts = make_batch(b, c)
    s = s.float()
    bs, la = BalancedSoftmaxLoss(counts)(s, y), LogitAdjustedLoss(counts, tau=1.0)(s, y)
    assert abs(bs.item() - la.item()) < 1e-6 * max(1.0, abs(la.item()))


def test_la_does_not_touch_the_logits():
    # Inference logits never contain the prior: the adjustment lives inside the loss only.
    s, y, _, counts = make_batch(8, 5)
    s = s.float()
    before = s.clone()
    LogitAdjustedLoss(counts)(s, y)
    BalancedSoftmaxLoss(counts)(s, y)
    assert torch.equal(s, before)


def test_posthoc_tau_zero_is_identity_and_tau_one_favours_tail():
    s, _, _, counts = make_batch(64, 10)
    s = s.float()
    out = posthoc_adjust(s, counts, 0.0)
    assert torch.equal(out, s) and torch.equal(out.argmax(1), s.argmax(1))
    tie = torch.zeros(1, 3)
    assert posthoc_adjust(tie, [100, 10, 1], 1.0).argmax(1).item() == 2


def test_ce_set_weight_switches_like_drw():
    s, y, w, _ = make_batch(16, 10)
    s = s.float()
    loss = CrossEntropyLoss()
    plain = loss(s, y)
    loss.set_weight(w)
    torch.testing.assert_close(loss(s, y), F.cross_entropy(s, y, weight=w.float()))
    loss.set_weight(None)
    torch.testing.assert_close(loss(s, y), plain)
    ldam = LDAMLoss([10] * 10, max_margin=0.0)
    ldam.set_weight(w)
    torch.testing.assert_close(ldam(s, y), F.cross_entropy(s, y, weight=w.float()))
    focal = FocalLoss(0.0)
    focal.set_weight(w)
    torch.testing.assert_close(focal(s, y), F.cross_entropy(s, y, weight=w.float()))


# ----------------------------------------------------------------------------------------------------
# dtypes and devices


def all_losses(counts, w):
    return [
        CrossEntropyLoss(w),
        FocalLoss(1.0, w),
        FocalLoss(2.0, w, parity="ldam"),
        ClassBalancedLoss(counts, 0.999),
        ClassBalancedLoss(counts, 0.999, loss="focal"),
        LDAMLoss(counts, weight=w),
        LogitAdjustedLoss(counts),
        BalancedSoftmaxLoss(counts),
    ]


def test_bf16_logits_give_finite_float32_losses():
    s, y, w, counts = make_batch(16, 10)
    s16 = (10 * s).bfloat16()
    for loss in all_losses(counts, w):
        out = loss(s16, y)
        assert out.dtype == torch.float32 and torch.isfinite(out), type(loss).__name__
        torch.testing.assert_close(out, loss(s16.float(), y), rtol=0, atol=0)  # cast first, then math
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert loss(s16, y).dtype == torch.float32


def test_buffers_move_with_to_and_stay_out_of_state_dict():
    _, _, w, counts = make_batch(4, 10)
    for loss in all_losses(counts, w):
        names = [n for n, b in loss.named_buffers() if b is not None]
        assert names, type(loss).__name__
        loss.to("meta")
        assert all(b.device.type == "meta" for b in loss.buffers() if b is not None)
        assert loss.state_dict() == {}


def test_losses_survive_float64_module_conversion():
    s, y, w, counts = make_batch(16, 10)
    s = s.float()
    for loss in all_losses(counts, w):
        expected = loss(s, y)
        out = loss.to(torch.float64)(s, y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected)


def test_set_weight_keeps_the_buffer_device():
    loss = CrossEntropyLoss(torch.ones(3)).to("meta")
    loss.set_weight(torch.ones(3))
    assert loss.weight.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_gpu_agree():
    s, y, w, counts = make_batch(64, 10)
    s = s.float()
    for loss in all_losses(counts, w):
        cpu = loss(s, y)
        gpu = loss.to("cuda")(s.cuda(), y.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("gamma", [-0.5, float("nan"), float("inf")])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        FocalLoss(gamma)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        ClassBalancedLoss([3, 2], loss="focal", gamma=gamma)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        class_balanced_weights([3, 2], beta)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        ClassBalancedLoss([3, 2], beta=beta)


@pytest.mark.parametrize("counts", [[5, 0, 3], [5, -1, 3]])
@pytest.mark.parametrize(
    "make",
    [
        lambda c: class_balanced_weights(c, 0.99),
        lambda c: ClassBalancedLoss(c),
        lambda c: ldam_margins(c),
        lambda c: LDAMLoss(c),
        lambda c: LogitAdjustedLoss(c),
        lambda c: BalancedSoftmaxLoss(c),
        lambda c: posthoc_adjust(torch.zeros(2, 3), c, 1.0),
    ],
)
def test_zero_or_negative_counts_raise(counts, make):
    with pytest.raises(ValueError, match=r"counts must be > 0 for every class; class\(es\) \[1\]"):
        make(counts)


def test_bad_counts_shape_and_values():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        LogitAdjustedLoss([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        LDAMLoss([])
    with pytest.raises(ValueError, match="finite"):
        BalancedSoftmaxLoss([1.0, float("inf")])


def test_shape_mismatches_raise():
    s, y, w, counts = make_batch(4, 5)
    s = s.float()
    with pytest.raises(ValueError, match=r"targets must be \[B\] = \[4\]"):
        CrossEntropyLoss()(s, y[:3])
    with pytest.raises(ValueError, match=r"logits must be \[B, C\]"):
        FocalLoss()(s[0], y[:1])
    with pytest.raises(ValueError, match="class weight has 3 entries but logits have 5 classes"):
        CrossEntropyLoss(w[:3])(s, y)
    with pytest.raises(ValueError, match="class weight has 3 entries but logits have 5 classes"):
        FocalLoss(weight=w[:3])(s, y)
    with pytest.raises(ValueError, match="class weight has 4 entries but logits have 5 classes"):
        ClassBalancedLoss(counts[:4])(s, y)
    for loss in (LDAMLoss(counts[:4]), LogitAdjustedLoss(counts[:4]), BalancedSoftmaxLoss(counts[:4])):
        with pytest.raises(ValueError, match="logits have 5 classes but the loss was built for 4"):
            loss(s, y)
    with pytest.raises(ValueError, match="counts have 4 classes but logits have 5"):
        posthoc_adjust(s, counts[:4])
    with pytest.raises(ValueError, match="weight has 3 entries but counts have 5"):
        LDAMLoss(counts, weight=w[:3])
    with pytest.raises(ValueError, match="weight has 3 entries but counts have 5"):
        LDAMLoss(counts).set_weight(w[:3])


def test_other_bad_arguments():
    s, y, _, counts = make_batch(4, 5)
    with pytest.raises(ValueError, match="targets must be integer class indices"):
        CrossEntropyLoss()(s, y.float())
    with pytest.raises(ValueError, match="focal parity must be one of default, ldam"):
        FocalLoss(parity="LDAM")
    with pytest.raises(ValueError, match="class-balanced loss must be one of ce, focal"):
        ClassBalancedLoss(counts, loss="sigmoid")
    with pytest.raises(ValueError, match="max_margin must be >= 0"):
        LDAMLoss(counts, max_margin=-0.1)
    with pytest.raises(ValueError, match="LDAM scale must be > 0"):
        LDAMLoss(counts, scale=0.0)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        LogitAdjustedLoss(counts, tau=-1.0)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        posthoc_adjust(s, counts, tau=float("nan"))
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        CrossEntropyLoss(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="weight must be a 1-D tensor"):
        FocalLoss(weight=torch.ones(2, 2))
