"""The class-balanced loss as the paper's code computes it (docs/methods.md §0.2, §1): the per-sample reduction
Σ_i w_{y_i}·L_i / B by default, the normalised Σ_i w_{y_i}·L_i / Σ_i w_{y_i} as an option, and the sigmoid
class-balanced focal loss, each against a slow reference written out with ``math`` (one sample, one class at
a time)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail import config as C
from longtail.errors import ConfigError
from longtail.losses import ClassBalancedLoss, CrossEntropyLoss, FocalLoss
from longtail.methods import create_method

COUNTS = [400, 120, 40, 9, 2]


# ----------------------------------------------------------------------------------------------- references


def ref_weights(counts, beta):
    w = [(1 - beta) / (1 - beta ** n) if beta > 0 else 1.0 for n in counts]
    return [x * len(counts) / sum(w) for x in w]


def ref_ce(z, y):
    m = max(z)
    return -z[y] + m + math.log(sum(math.exp(v - m) for v in z))


def ref_softmax_focal(z, y, gamma):
    logp = -ref_ce(z, y)
    return -((1 - math.exp(logp)) ** gamma) * logp


def ref_log_sigmoid(v):
    return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))


def ref_sigmoid_focal(z, y, gamma):
    """Σ_c over the one-vs-all terms, in the paper's own form: modulator exp(−γ·t·z − γ·log(1 + exp(−z)))
    times the binary cross-entropy −t·log σ(z) − (1 − t)·log(1 − σ(z)), t = 1 for c = y."""
    total = 0.0
    for c, zc in enumerate(z):
        t = 1.0 if c == y else 0.0
        bce = -t * ref_log_sigmoid(zc) - (1 - t) * ref_log_sigmoid(-zc)
        log1p_exp_minus_z = -ref_log_sigmoid(zc)  # log(1 + exp(−z)), overflow-free
        modulator = math.exp(-gamma * t * zc - gamma * log1p_exp_minus_z)
        total += modulator * bce
    return total


def ref_loss(logits, targets, weight, per_sample, reduction):
    rows, ys = logits.tolist(), targets.tolist()
    num = sum(weight[y] * per_sample(z, y) for z, y in zip(rows, ys))
    den = len(rows) if reduction == "batch" else sum(weight[y] for y in ys)
    return num / den


def batch(b=12, c=5, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)


def cb_method(**over):
    cfg = C.Config()
    C.apply_overrides(cfg, ["method.name=cb", *[f"method.{k}={v}" for k, v in over.items()]])
    C.validate(cfg)
    return create_method(cfg, np.array(COUNTS))


# ---------------------------------------------------------------------------------------------- reductions


def test_cb_method_defaults_to_the_papers_per_sample_reduction():
    s, y = batch()
    m = cb_method()
    assert m.params.cb_reduction == "batch" and m.params.cb_loss == "ce"
    w = ref_weights(COUNTS, 0.9999)
    expected = ref_loss(s, y, w, ref_ce, "batch")
    assert m.criterion(s, y).item() == pytest.approx(expected, rel=1e-5)
    # the two reductions differ by Σw/B on this batch (and are not equal here)
    normalised = ref_loss(s, y, w, ref_ce, "normalized")
    factor = sum(w[t] for t in y.tolist()) / len(y)
    assert expected == pytest.approx(normalised * factor, rel=1e-9) and abs(factor - 1) > 0.05


@pytest.mark.parametrize("loss", ["ce", "focal", "sigmoid_focal"])
@pytest.mark.parametrize("reduction", ["batch", "normalized"])
@pytest.mark.parametrize("beta", [0.9, 0.999])
def test_cb_loss_matches_reference(loss, reduction, beta):
    s, y = batch(b=9, c=4, seed=int(beta * 1000) + len(loss))
    counts = [300, 50, 7, 1]
    gamma = 1.5
    per = {"ce": ref_ce, "focal": lambda z, t: ref_softmax_focal(z, t, gamma),
           "sigmoid_focal": lambda z, t: ref_sigmoid_focal(z, t, gamma)}[loss]
    expected = ref_loss(s, y, ref_weights(counts, beta), per, reduction)
    got = ClassBalancedLoss(counts, beta=beta, loss=loss, gamma=gamma, reduction=reduction)(s, y)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, rel=1e-5)


def test_normalized_option_through_the_method():
    s, y = batch(seed=3)
    m = cb_method(cb_reduction="normalized", cb_beta=0.99)
    expected = ref_loss(s, y, ref_weights(COUNTS, 0.99), ref_ce, "normalized")
    assert m.criterion(s, y).item() == pytest.approx(expected, rel=1e-5)


def test_sigmoid_focal_through_the_method_and_its_gradient():
    s, y = batch(b=6, seed=4)
    m = cb_method(cb_loss="sigmoid_focal", focal_gamma=2.0, cb_beta=0.999)
    w = ref_weights(COUNTS, 0.999)
    expected = ref_loss(s, y, w, lambda z, t: ref_sigmoid_focal(z, t, 2.0), "batch")
    x = s.clone().requires_grad_(True)
    out = m.criterion(x, y)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    out.backward()
    # central differences of the reference in float64 at two entries
    for i, c in [(0, int(y[0])), (3, (int(y[3]) + 1) % 5)]:
        h, up, down = 1e-5, s.double().clone(), s.double().clone()
        up[i, c] += h
        down[i, c] -= h
        num = (ref_loss(up, y, w, lambda z, t: ref_sigmoid_focal(z, t, 2.0), "batch")
               - ref_loss(down, y, w, lambda z, t: ref_sigmoid_focal(z, t, 2.0), "batch")) / (2 * h)
        assert x.grad[i, c].item() == pytest.approx(num, rel=1e-3, abs=1e-6)


def test_ldam_drw_keeps_its_normalised_reweighting():
    cfg = C.Config()
    C.apply_overrides(cfg, ["method.name=ldam_drw", "model.head=cosine"])
    m = create_method(cfg, np.array(COUNTS))
    m.on_epoch_start(m.params.drw_epoch)
    s, y = batch(seed=5)
    w = m.criterion.weight.tolist()
    margins = m.criterion.margins.tolist()
    scale = m.criterion.scale

    def ldam_ce(z, t):
        z = list(z)
        z[t] -= scale * margins[t]
        return ref_ce(z, t)

    assert m.criterion(s, y).item() == pytest.approx(ref_loss(s, y, w, ldam_ce, "normalized"), rel=1e-5)
    assert m.criterion(s, y).item() != pytest.approx(ref_loss(s, y, w, ldam_ce, "batch"), rel=1e-3)


# ------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("reduction", ["batch", "normalized"])
def test_beta_zero_is_the_plain_loss(reduction):
    s, y = batch(seed=6)
    plain_ce = CrossEntropyLoss()(s, y)
    torch.testing.assert_close(ClassBalancedLoss(COUNTS, beta=0.0, reduction=reduction)(s, y), plain_ce)
    torch.testing.assert_close(ClassBalancedLoss(COUNTS, beta=0.0, loss="focal", gamma=2.0, reduction=reduction)(s, y),
                               FocalLoss(2.0)(s, y))
    # sigmoid: the plain (unweighted) one-vs-all focal loss summed over classes, averaged over the batch
    expected = sum(ref_sigmoid_focal(z, t, 2.0) for z, t in zip(s.tolist(), y.tolist())) / len(y)
    got = ClassBalancedLoss(COUNTS, beta=0.0, loss="sigmoid_focal", gamma=2.0, reduction=reduction)(s, y)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sigmoid_focal_gamma_zero_is_binary_cross_entropy():
    s, y = batch(seed=7)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, onehot, reduction="none").sum(1).mean()
    torch.testing.assert_close(ClassBalancedLoss(COUNTS, beta=0.0, loss="sigmoid_focal", gamma=0.0)(s, y), bce)


@pytest.mark.parametrize("loss", ["ce", "focal", "sigmoid_focal"])
@pytest.mark.parametrize("reduction", ["batch", "normalized"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_finite_values_and_gradients_at_extreme_logits(loss, reduction, gamma):
    # ±100: the right class far ahead, far behind, and ties of huge logits
    s = torch.tensor([[100.0, -100.0, -100.0, 0.0, 100.0],
                      [-100.0, 100.0, -100.0, 100.0, -100.0],
                      [100.0, 100.0, 100.0, 100.0, 100.0],
                      [-100.0, -100.0, -100.0, -100.0, -100.0]], requires_grad=True)
    y = torch.tensor([0, 0, 2, 4])
    out = ClassBalancedLoss(COUNTS, beta=0.999, loss=loss, gamma=gamma, reduction=reduction)(s, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    if loss == "sigmoid_focal":  # the exact value, from the overflow-free reference
        w = ref_weights(COUNTS, 0.999)
        expected = ref_loss(s.detach(), y, w, lambda z, t: ref_sigmoid_focal(z, t, gamma), reduction)
        assert out.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("over, msg", [
    ({"cb_reduction": "mean"}, "method.cb_reduction must be one of batch, normalized (got 'mean')"),
    ({"cb_loss": "sigmoid"}, "method.cb_loss must be one of ce, focal, sigmoid_focal (got 'sigmoid')"),
    ({"cb_loss": "sigmoid_focal", "focal_parity": "ldam"}, "method.focal_parity ldam applies to the softmax"),
    ({"cb_loss": "focal", "focal_parity": "ldam", "cb_reduction": "normalized"},
     "method.focal_parity ldam has LDAM-DRW's own batch mean: use it with cb_reduction=batch"),
])
def test_bad_options_are_one_line_config_errors(over, msg):
    cfg = C.Config()
    C.apply_overrides(cfg, ["method.name=cb", *[f"method.{k}={v}" for k, v in over.items()]])
    before = {k: getattr(cfg.method, k) for k in ("cb_beta", "cb_loss", "cb_reduction", "focal_parity")}
    with pytest.raises(ConfigError) as err:
        C.validate(cfg)
    assert msg in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="method.cb_|method.focal_parity"):
        create_method(cfg, np.array(COUNTS))
    # nothing in the config was changed by the refusal
    assert {k: getattr(cfg.method, k) for k in before} == before


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="class-balanced reduction must be one of batch, normalized"):
        ClassBalancedLoss(COUNTS, reduction="sum")
    with pytest.raises(ValueError, match="class-balanced loss must be one of ce, focal, sigmoid_focal"):
        ClassBalancedLoss(COUNTS, loss="softmax")
    with pytest.raises(ValueError, match="focal parity 'ldam' .* needs loss='focal' and reduction='batch'"):
        ClassBalancedLoss(COUNTS, loss="focal", parity="ldam", reduction="normalized")
    # LDAM's focal parity keeps its own batch mean under the (default) batch reduction
    s, y = batch(seed=8)
    w = torch.tensor(ref_weights(COUNTS, 0.9999))
    torch.testing.assert_close(ClassBalancedLoss(COUNTS, loss="focal", parity="ldam", gamma=1.0)(s, y),
                               FocalLoss(1.0, weight=w, parity="ldam")(s, y))


def test_runs_written_before_the_reduction_key_keep_the_normalised_form(tmp_path):
    """A cb run's config.yaml from before `cb_reduction` existed was trained with Σw·L/Σw: reading it back
    (eval, resume, extract) must keep that, not switch the run to the new default."""
    import yaml

    from longtail import config as C
    from longtail.engine.run import load_run_config

    cfg = C.apply_overrides(C.Config(), ["data.name=digits", "method.name=cb"])
    new = C.to_dict(cfg)
    old = {**new, "method": {k: v for k, v in new["method"].items() if k != "cb_reduction"}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    assert load_run_config(tmp_path / "old.yaml").method.cb_reduction == "normalized"
    assert load_run_config(tmp_path / "old.yaml", ["method.cb_reduction=batch"]).method.cb_reduction == "batch"
    assert load_run_config(tmp_path / "new.yaml").method.cb_reduction == "batch"
    assert C.load(tmp_path / "old.yaml").method.cb_reduction == "batch"  # a user's config takes the default
    ce = {**new, "method": {"name": "ce"}}
    (tmp_path / "ce.yaml").write_text(yaml.safe_dump(ce))
    assert load_run_config(tmp_path / "ce.yaml").method.name == "ce"
