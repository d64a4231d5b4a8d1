"""Batch mixing (train.mix): mixup, CutMix and Remix.

The label rules against written-out references (slow per-sample loops in float64), CutMix's box and λ,
Remix's λ_y on both sides of κ and τ (boundaries included), the unmixed path unchanged, reproducibility
and exact resume, the refusals, and short end-to-end runs on the digits set.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from longtail import config as C
from longtail.data.samplers import mix_seed
from longtail.engine import run as R
from longtail.engine.logging import NullLogger
from longtail.engine.trainer import Trainer
from longtail.errors import ConfigError
from longtail.losses import (BalancedSoftmaxLoss, ClassBalancedLoss, CrossEntropyLoss, FocalLoss, LDAMLoss,
                             LogitAdjustedLoss, class_balanced_weights, ldam_margins)
from longtail.mixing import (BatchMixer, MixedLabels, check_criterion, cutmix_box, cutmix_images, draw_lambda,
                             mixed_correct, mixed_criterion, mixup_images, remix_label_weights)

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [40, 20, 12, 7, 3]
C_ = len(COUNTS)


def quiet(*a, **k):
    pass


# ---------------------------------------------------------------------------------------------- references

def ce_term(s: list, y: int) -> float:
    return -s[y] + math.log(sum(math.exp(v) for v in s))


def ref_terms(kind: str, logits: torch.Tensor, y: list) -> list:
    """Per-sample terms ℓ_i, written out (float64)."""
    out = []
    prior = [n / sum(COUNTS) for n in COUNTS]
    margins = ldam_margins(COUNTS, 0.5).double().tolist()
    for s, t in zip(logits.double().tolist(), y):
        if kind in ("ce", "cb"):
            out.append(ce_term(s, t))
        elif kind == "la":
            out.append(ce_term([v + math.log(p) for v, p in zip(s, prior)], t))
        elif kind == "bs":
            out.append(ce_term([v + math.log(n) for v, n in zip(s, COUNTS)], t))
        elif kind == "ldam":
            out.append(ce_term([v - (30.0 * margins[t] if c == t else 0.0) for c, v in enumerate(s)], t))
        elif kind in ("focal", "cb_focal"):
            ce = ce_term(s, t)
            out.append((1 - math.exp(-ce)) ** 2.0 * ce)
        else:
            raise AssertionError(kind)
    return out


def ref_loss(kind: str, logits, y: list, weight, coef: list, by_batch: bool = False) -> float:
    """Σ_i c_i w_{y_i} ℓ_i / Σ_i w_{y_i} (or / B unweighted, or with ``by_batch``: the class-balanced
    paper's reduction): the criterion with per-sample coefficients."""
    terms = ref_terms(kind, logits, y)
    if weight is None:
        return sum(c * t for c, t in zip(coef, terms)) / len(terms)
    w = [float(weight[t]) for t in y]
    return sum(c * wi * t for c, wi, t in zip(coef, w, terms)) / (len(terms) if by_batch else sum(w))


def criteria():
    drw = class_balanced_weights(COUNTS, 0.9999)
    return {
        "ce": (CrossEntropyLoss(), "ce", None),
        "ce_drw": (CrossEntropyLoss(drw), "ce", drw),
        "la": (LogitAdjustedLoss(COUNTS, tau=1.0), "la", None),
        "bs": (BalancedSoftmaxLoss(COUNTS), "bs", None),
        "ldam": (LDAMLoss(COUNTS, 0.5, 30.0), "ldam", None),
        "ldam_drw": (LDAMLoss(COUNTS, 0.5, 30.0, weight=drw), "ldam", drw),
        # cb's default reduction divides by the batch size, its normalized one by the sum of the weights
        "cb": (ClassBalancedLoss(COUNTS, beta=0.99), "cb", class_balanced_weights(COUNTS, 0.99)),
        "cb_norm": (ClassBalancedLoss(COUNTS, beta=0.99, reduction="normalized"), "cb",
                    class_balanced_weights(COUNTS, 0.99)),
        "cb_focal": (ClassBalancedLoss(COUNTS, beta=0.99, loss="focal", gamma=2.0), "cb_focal",
                     class_balanced_weights(COUNTS, 0.99)),
        "cb_focal_norm": (ClassBalancedLoss(COUNTS, beta=0.99, loss="focal", gamma=2.0, reduction="normalized"),
                          "cb_focal", class_balanced_weights(COUNTS, 0.99)),
        "focal": (FocalLoss(gamma=2.0), "focal", None),
    }


def batch(b=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, C_, generator=g) * 3
    y_a = torch.randint(0, C_, (b,), generator=g)
    y_b = y_a[torch.randperm(b, generator=g)]
    return logits, y_a, y_b


# ---------------------------------------------------------------------------------------------- label rules

@pytest.mark.parametrize("name", list(criteria()))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.85, 1.0])
def test_mixup_and_cutmix_loss_is_lambda_weighted_sum_of_the_two_label_losses(name, lam):
    crit, kind, weight = criteria()[name]
    by_batch = name in ("cb", "cb_focal")
    logits, y_a, y_b = batch()
    got = mixed_criterion(crit, logits, y_a, MixedLabels(y_b, torch.tensor(lam)))
    ones = [1.0] * len(y_a)
    want = lam * ref_loss(kind, logits, y_a.tolist(), weight, ones, by_batch) + \
        (1 - lam) * ref_loss(kind, logits, y_b.tolist(), weight, ones, by_batch)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(criteria()))
def test_remix_loss_uses_per_sample_label_weights_with_the_criterion_normaliser(name):
    crit, kind, weight = criteria()[name]
    by_batch = name in ("cb", "cb_focal")
    logits, y_a, y_b = batch(9, seed=3)
    lam_y = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9, 0.0, 1.0, 0.7, 0.1])
    got = mixed_criterion(crit, logits, y_a, MixedLabels(y_b, lam_y))
    c = lam_y.tolist()
    want = ref_loss(kind, logits, y_a.tolist(), weight, c, by_batch) + \
        ref_loss(kind, logits, y_b.tolist(), weight, [1 - v for v in c], by_batch)
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # a constant per-sample λ is the batch-wide rule
    const = mixed_criterion(crit, logits, y_a, MixedLabels(y_b, torch.full((9,), 0.3)))
    torch.testing.assert_close(const, mixed_criterion(crit, logits, y_a, MixedLabels(y_b, torch.tensor(0.3))))


def test_focal_ldam_parity_takes_sample_weights_over_its_batch_mean():
    w = class_balanced_weights(COUNTS, 0.9999)
    crit = FocalLoss(gamma=1.0, weight=w, parity="ldam")
    logits, y_a, _ = batch()
    c = torch.linspace(0, 1, 7)
    want = 0.0
    for s, t, ci in zip(logits.double().tolist(), y_a.tolist(), c.tolist()):
        ce = float(w[t]) * ce_term(s, t)
        want += ci * (1 - math.exp(-ce)) * ce
    assert float(crit(logits, y_a, sample_weight=c)) == pytest.approx(want / 7, rel=1e-5)


def test_torch_cross_entropy_criterion_takes_label_weights_too():
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 3.0])
    logits, y_a, y_b = batch()
    for crit in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(weight=w), nn.CrossEntropyLoss(label_smoothing=0.1)):
        ones = torch.ones(7)
        torch.testing.assert_close(mixed_criterion(crit, logits, y_a, MixedLabels(y_b, ones)), crit(logits, y_a))
        torch.testing.assert_close(mixed_criterion(crit, logits, y_a, MixedLabels(y_b, torch.full((7,), 0.4))),
                                   0.4 * crit(logits, y_a) + 0.6 * crit(logits, y_b))
    check_criterion(nn.CrossEntropyLoss(), "remix", "ce")  # accepted


def ref_remix(na: int, nb: int, lam: float, kappa, tau: float) -> float:
    """Chou et al.: λ_y = 0 if n_a/n_b ≥ κ and λ < τ; 1 if n_a/n_b ≤ 1/κ and 1 − λ < τ; λ otherwise."""
    ratio, k = Fraction(na, nb), Fraction(kappa)
    if ratio >= k and lam < tau:
        return 0.0
    if ratio <= 1 / k and 1 - lam < tau:
        return 1.0
    return lam


@pytest.mark.parametrize("kappa", [3, 2.5])
@pytest.mark.parametrize("lam", [0.0, 0.2, 0.49, 0.5, 0.51, 0.8, 1.0])
def test_remix_label_weight_on_both_sides_of_kappa_and_tau(kappa, lam):
    # count pairs around the boundaries: ratio exactly κ and 1/κ, just inside and outside, equal counts
    pairs = [(30, 10), (29, 10), (31, 10), (10, 30), (10, 29), (10, 31), (25, 10), (10, 25), (24, 10), (10, 24),
             (5, 2), (2, 5), (7, 7), (100, 1), (1, 100)]
    n_a = torch.tensor([a for a, _ in pairs])
    n_b = torch.tensor([b for _, b in pairs])
    got = remix_label_weights(n_a, n_b, torch.tensor(lam, dtype=torch.float32), kappa, 0.5)
    want = [ref_remix(a, b, float(torch.tensor(lam, dtype=torch.float32)), kappa, 0.5) for a, b in pairs]
    assert got.dtype == torch.float32 and got.tolist() == pytest.approx(want)


def test_remix_gives_the_minority_class_the_label():
    n = torch.tensor([300, 10])
    # a majority image (class 0) mixed with 70 % of a minority image: the label is the minority's
    assert remix_label_weights(n[:1], n[1:], torch.tensor(0.3), 3.0, 0.5).tolist() == [0.0]
    # a minority image (class 1) holding 70 %: all of its own label
    assert remix_label_weights(n[1:], n[:1], torch.tensor(0.7), 3.0, 0.5).tolist() == [1.0]
    # a majority image that dominates keeps mixup's label
    assert remix_label_weights(n[:1], n[1:], torch.tensor(0.7), 3.0, 0.5).tolist() == pytest.approx([0.7])
    # τ = 0 never rebalances; τ = 1 always does when the counts differ enough
    assert remix_label_weights(n[:1], n[1:], torch.tensor(0.3), 3.0, 0.0).tolist() == pytest.approx([0.3])
    assert remix_label_weights(n[:1], n[1:], torch.tensor(0.99), 3.0, 1.0).tolist() == [0.0]


def test_training_accuracy_is_lambda_weighted():
    logits, y_a, y_b = batch(9, seed=5)
    lam = torch.linspace(0, 1, 9)
    pred = logits.argmax(1).tolist()
    want = sum(l * (p == a) + (1 - l) * (p == b) for l, p, a, b in zip(lam.tolist(), pred, y_a.tolist(), y_b.tolist()))
    assert float(mixed_correct(logits, y_a, MixedLabels(y_b, lam))) == pytest.approx(want)
    assert int(mixed_correct(logits, y_a, None)) == sum(p == a for p, a in zip(pred, y_a.tolist()))
    assert float(mixed_correct(logits, y_a, MixedLabels(y_b, torch.tensor(1.0)))) == float(mixed_correct(logits, y_a, None))


# ---------------------------------------------------------------------------------------------- images and draws

def test_mixup_images_against_a_loop():
    x = torch.randn(4, 3, 5, 6)
    partner = torch.tensor([2, 0, 3, 1])
    got = mixup_images(x, partner, torch.tensor(0.3))
    for i in range(4):
        torch.testing.assert_close(got[i], 0.3 * x[i] + 0.7 * x[partner[i]])


@pytest.mark.parametrize("hw", [(8, 8), (7, 12), (32, 32)])
@pytest.mark.parametrize("seed", range(6))
def test_cutmix_box_is_the_clipped_box_and_lambda_its_area(hw, seed):
    h, w = hw
    g = torch.Generator().manual_seed(seed)
    lam = torch.rand((), generator=g)
    g.manual_seed(100 + seed)
    box = cutmix_box(g, lam, h, w)
    # the reference: draw the centre again, build the box pixel by pixel
    u = torch.rand(2, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64).tolist()
    side = math.sqrt(1 - float(lam))
    bh, bw = math.floor(h * side), math.floor(w * side)
    cy, cx = min(math.floor(u[0] * h), h - 1), min(math.floor(u[1] * w), w - 1)
    y0, x0 = cy - bh // 2, cx - bw // 2
    want = [[y0 <= r < y0 + bh and x0 <= c < x0 + bw for c in range(w)] for r in range(h)]
    assert box.tolist() == want
    x = torch.arange(2 * 1 * h * w, dtype=torch.float32).view(2, 1, h, w)  # every pixel distinct
    mixed, lam_box = cutmix_images(x, torch.tensor([1, 0]), box)
    from_partner = sum(int(mixed[0, 0, r, c] == x[1, 0, r, c]) for r in range(h) for c in range(w))
    assert float(lam_box) == pytest.approx(1 - from_partner / (h * w), abs=1e-7)
    assert float(lam_box) >= float(lam) - 1e-6  # clipping only shrinks the box


def test_lambda_draw_is_beta_and_prob_zero_never_mixes():
    g = torch.Generator()
    lams = []
    for s in range(400):
        g.manual_seed(s)
        lams.append(float(draw_lambda(g, 0.2, 1.0, "cpu")))
    t = torch.tensor(lams)
    assert ((t >= 0) & (t <= 1)).all()
    # Beta(0.2, 0.2) puts most of its mass near 0 and 1, mean 1/2 and variance 1/(4(2α+1)) = 0.1786
    assert abs(t.mean().item() - 0.5) < 0.06 and abs(t.var().item() - 0.1786) < 0.03
    assert all(float(draw_lambda(g.manual_seed(s), 1.0, 0.0, "cpu")) == 1.0 for s in range(20))
    mixed = [float(draw_lambda(g.manual_seed(s), 1.0, 0.5, "cpu")) != 1.0 for s in range(400)]
    assert 0.4 < sum(mixed) / 400 < 0.6


def tiny_train(**over) -> C.Config:
    ov = {"train.epochs": 1, "train.batch_size": 64, "train.eval_every": 0, "train.progress": "false",
          "optim.warmup_epochs": 0, "model.width": 8, "eval.batch_size": 500, "device": "cpu"}
    ov.update(over)
    return C.load(ROOT / "configs" / "quickstart.yaml", [f"{k}={v}" for k, v in ov.items()])


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "remix"])
def test_the_mixer_is_a_function_of_seed_epoch_and_step(mode):
    cfg = tiny_train(**{"train.mix": mode})
    counts = torch.tensor([30, 10, 3])
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    a = BatchMixer(cfg.train, counts)(x, y, 2, 5)
    b = BatchMixer(cfg.train, counts)(x, y, 2, 5)
    c = BatchMixer(cfg.train, counts)(x, y, 2, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].labels_b, b[1].labels_b) and torch.equal(a[1].lam, b[1].lam)
    assert not torch.equal(a[0], c[0])
    # the draws come from the step's own generator (stream 1; the augmentation uses stream 0)
    g = torch.Generator().manual_seed(mix_seed(cfg.train.seed, 2, 5, 1))
    lam = draw_lambda(g, cfg.train.mix_alpha, cfg.train.mix_prob, "cpu")
    assert torch.equal(a[1].labels_b, y[torch.randperm(6, generator=g)])
    if mode == "mixup":
        assert torch.equal(a[1].lam, lam)
    if mode == "remix":
        assert a[1].lam.shape == (6,)


# ---------------------------------------------------------------------------------------------- the trainer

def _trainer(cfg, tmp_path) -> tuple[Trainer, R.Pieces]:
    torch.manual_seed(0)
    p = R.build_pieces(cfg, torch.device("cpu"))
    tr = Trainer(cfg, tmp_path, network=p.network, method=p.method, train_batches=p.train_batches,
                 eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                 num_classes=p.dataset.num_classes, device=torch.device("cpu"), logger=NullLogger(), echo=quiet)
    tr.save = lambda: None
    return tr, p


@pytest.mark.parametrize("method", ["ce", "focal", "cb", "ldam_drw", "la"])
def test_mixing_off_gives_the_loss_of_the_plain_criterion_bit_for_bit(method, tmp_path):
    over = {"method.name": method}
    if method == "ldam_drw":
        over.update({"model.head": "cosine", "method.drw_epoch": 0})
    tr, p = _trainer(tiny_train(**over), tmp_path)
    assert tr.mixer is None
    tr.method.on_epoch_start(0)
    b = next(iter(p.train_batches.epoch(0)))
    loss, _, correct = tr._forward_loss(b.views, b.labels, b.index)
    logits = p.network(b.views[0]).logits.float()
    crit = tr.method.criterion
    if method == "ce":
        want = F.cross_entropy(logits, b.labels)  # the formulas as they were before batch mixing
    elif method == "la":
        want = F.cross_entropy(logits + crit.tau * crit.log_prior, b.labels)
    elif method == "cb":  # the class-balanced paper's reduction: Σ w·CE / B
        want = F.cross_entropy(logits, b.labels, weight=crit.weight, reduction="none").sum() / b.labels.numel()
    elif method == "ldam_drw":
        adjusted = logits.scatter_add(1, b.labels[:, None], -(crit.scale * crit.margins[b.labels])[:, None])
        want = F.cross_entropy(adjusted, b.labels, weight=crit.weight)
    else:
        want = crit(logits, b.labels)
    assert torch.equal(loss, want)
    assert torch.equal(correct, (logits.argmax(1) == b.labels).sum())


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "remix"])
def test_mixing_probability_zero_trains_exactly_as_no_mixing(mode, tmp_path):
    """λ = 1 mixes nothing: the images, the loss and the gradients equal the unmixed ones bit for bit."""
    runs = []
    for m, prob in (("none", 1.0), (mode, 0.0)):
        tr, p = _trainer(tiny_train(**{"train.mix": m, "train.mix_prob": prob, "train.max_steps": 3}), tmp_path)
        tr.fit()
        runs.append({k: v.clone() for k, v in p.network.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_mixing_stops_at_mix_stop_epoch(tmp_path):
    tr, p = _trainer(tiny_train(**{"train.mix": "mixup", "train.mix_stop_epoch": 1, "train.epochs": 2}), tmp_path)
    calls = []
    mixer = tr.mixer
    tr.mixer = type("Spy", (), {"active": mixer.active,
                                "__call__": lambda self, *a: calls.append(a[2]) or mixer(*a)})()
    tr.fit()
    assert calls and set(calls) == {0}  # epoch 0 mixed, epoch 1 not
    assert tr.progress.epoch == 2


def test_evaluation_is_never_mixed(tmp_path, monkeypatch):
    tr, _ = _trainer(tiny_train(**{"train.mix": "cutmix"}), tmp_path)
    plain, _ = _trainer(tiny_train(), tmp_path)
    monkeypatch.setattr(BatchMixer, "__call__", lambda *a: pytest.fail("evaluation called the mixer"))
    assert tr.evaluate()["top1"] == plain.evaluate()["top1"]


def _weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    return R.train(tiny_train(**{"train.eval_every": 1}),
                   out=str(tmp_path_factory.mktemp("plain") / "r"), echo=quiet)


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "remix"])
def test_mixed_runs_train_end_to_end(mode, plain_run, tmp_path):
    a = R.train(tiny_train(**{"train.mix": mode, "train.eval_every": 1}), out=str(tmp_path / "a"), echo=quiet)
    s = json.loads((a / "summary.json").read_text())
    assert s["steps"] == json.loads((plain_run / "summary.json").read_text())["steps"] >= 5 and 0 <= s["top1"] <= 100
    lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert len(lines) == 1 and all(math.isfinite(e["loss"]) and 0 <= e["train_acc"] <= 100 for e in lines if "loss" in e)
    wa, wc = _weights(a), _weights(plain_run)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # mixing changed the training


def test_a_resumed_mixed_run_equals_the_uninterrupted_one(tmp_path):
    over = {"train.mix": "remix", "train.mix_alpha": 0.5}
    full = R.train(tiny_train(**over), out=str(tmp_path / "full"), echo=quiet)
    part = R.train(tiny_train(**over, **{"train.max_steps": 3}), out=str(tmp_path / "part"), echo=quiet)
    R.train(C.load(part / "config.yaml", ["train.max_steps=null"]), resume=str(part), echo=quiet)
    wa, wb = _weights(full), _weights(part)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same run, also across a resume


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_mixed_loss_in_one_graph(tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = []
    for compiled in ("false", "true"):
        cfg = tiny_train(**{"train.mix": "remix", "train.compile": compiled, "train.compile_backend": "aot_eager",
                            "train.drop_last": "true"})
        tr, p = _trainer(cfg, tmp_path)
        tr.method.on_epoch_start(0)
        p.network.train()
        b = next(iter(p.train_batches.epoch(0)))
        mixed, mix = tr.mixer(b.views[0], b.labels, 0, 0)
        loss, _, correct = tr._forward_loss([mixed], b.labels, b.index, mix)
        loss.backward()
        results.append((loss.detach(), correct, {n: q.grad.clone() for n, q in p.network.named_parameters()}))
    (l0, c0, g0), (l1, c1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c1, c0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-3, atol=1e-5, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_the_example_plugin_takes_remix_label_weights():
    from longtail.registry import METHODS, load_plugins

    load_plugins([str(ROOT / "examples" / "inverse_frequency.py")])
    method = METHODS.get("inverse_frequency")(METHODS.get("inverse_frequency").Params(power=1.0),
                                              model=C.Config().model, augment="standard", train_counts=COUNTS)
    check_criterion(method.criterion, "remix", "inverse_frequency")
    logits, y_a, y_b = batch(9, seed=4)
    lam = torch.linspace(0, 1, 9)
    w = method.criterion.weight
    want = ref_loss("ce", logits, y_a.tolist(), w, lam.tolist()) + \
        ref_loss("ce", logits, y_b.tolist(), w, (1 - lam).tolist())
    assert float(mixed_criterion(method.criterion, logits, y_a, MixedLabels(y_b, lam))) == pytest.approx(want, rel=1e-5)
    assert torch.equal(method.criterion(logits, y_a), F.cross_entropy(logits, y_a, weight=w))  # unmixed: as before


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("method", ["bcl", "bbl", "supcon"])
def test_multi_view_methods_refuse_mixing(method, tmp_path):
    with pytest.raises(ConfigError, match=r"train.mix=mixup cannot be used: method '\w+' trains on 3 views per image"):
        R.train(C.load(ROOT / "configs" / "cifar10_lt" / f"{method}.yaml", ["train.mix=mixup", "device=cpu"]),
                out=str(tmp_path / "r"), echo=quiet)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, needle", [
    ("train.mix=mixupp", "did you mean 'mixup'"), ("train.mix_alpha=0", "train.mix_alpha must be"),
    ("train.mix_alpha=inf", "train.mix_alpha must be"), ("train.mix_prob=1.5", "train.mix_prob must be in"),
    ("train.remix_kappa=0.5", "train.remix_kappa must be"), ("train.remix_tau=-0.1", "train.remix_tau must be"),
    ("train.mix_stop_epoch=0", "train.mix_stop_epoch must be"),
])
def test_bad_mixing_values_are_one_line_errors(override, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle) as e:
        R.train(tiny_train(**dict([override.split("=")])), out=str(tmp_path / "r"), echo=quiet)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


class _NoWeights(nn.Module):
    def forward(self, logits, targets):
        return F.cross_entropy(logits.float(), targets)


def test_remix_refuses_a_criterion_without_sample_weight_and_mixup_takes_it(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.mix=remix needs per-sample label weights.*_NoWeights"):
        check_criterion(_NoWeights(), "remix", "mine")
    for mode in ("none", "mixup", "cutmix"):
        check_criterion(_NoWeights(), mode, "mine")
    logits, y_a, y_b = batch()
    torch.testing.assert_close(mixed_criterion(_NoWeights(), logits, y_a, MixedLabels(y_b, torch.tensor(0.25))),
                               0.25 * F.cross_entropy(logits, y_a) + 0.75 * F.cross_entropy(logits, y_b))
    # through train(): refused before the run directory exists
    from longtail.methods.ce import CE

    monkeypatch.setattr(CE, "make_criterion", lambda self: _NoWeights())
    with pytest.raises(ConfigError, match="method 'ce' \\(_NoWeights\\) has no sample_weight"):
        R.train(tiny_train(**{"train.mix": "remix", "method.name": "ce"}), out=str(tmp_path / "r"), echo=quiet)
    assert not (tmp_path / "r").exists()


def test_a_method_with_its_own_loss_must_say_how_to_mix_it():
    from longtail.methods.base import Method

    class OwnLoss(Method):
        name = "own_loss"

        def loss(self, batch, output):
            return super().loss(batch, output)

    class OwnBoth(OwnLoss):
        def mixed_loss(self, batch, output, mix):
            return super().mixed_loss(batch, output, mix)

    assert "overrides Method.loss" in OwnLoss.mixing_refusal()
    assert OwnBoth.mixing_refusal() is None and Method.mixing_refusal() is None


def _smoothed_terms(logits, y: list, eps: float, weight, adjust=None) -> list:
    """torch's label-smoothed CE term per sample, written out: −(1 − ε) w_y log p_y − (ε / C) Σ_c w_c log p_c."""
    out = []
    for s, t in zip(logits.double().tolist(), y):
        s = adjust(s, t) if adjust else s
        lse = math.log(sum(math.exp(v) for v in s))
        logp = [v - lse for v in s]
        w = [1.0] * len(s) if weight is None else [float(v) for v in weight]
        out.append(-(1 - eps) * w[t] * logp[t] - eps / len(s) * sum(wc * lp for wc, lp in zip(w, logp)))
    return out


@pytest.mark.parametrize("name", ["ce", "ce_drw", "cb", "cb_norm", "la", "ldam_drw"])
def test_remix_with_label_smoothing_matches_the_written_out_loss(name):
    """Mixing and label smoothing together: each sample's smoothed (class-weighted) term times its label
    coefficient, over the criterion's own normaliser."""
    eps = 0.2
    drw, cbw = class_balanced_weights(COUNTS, 0.9999), class_balanced_weights(COUNTS, 0.99)
    prior = [n / sum(COUNTS) for n in COUNTS]
    margins = ldam_margins(COUNTS, 0.5).double().tolist()
    crit, weight, norm, adjust = {
        "ce": (CrossEntropyLoss(label_smoothing=eps), None, "n", None),
        "ce_drw": (CrossEntropyLoss(drw, label_smoothing=eps), drw, "w", None),
        "cb": (ClassBalancedLoss(COUNTS, beta=0.99, label_smoothing=eps), cbw, "n", None),
        "cb_norm": (ClassBalancedLoss(COUNTS, beta=0.99, label_smoothing=eps, reduction="normalized"), cbw, "w", None),
        "la": (LogitAdjustedLoss(COUNTS, tau=1.0, label_smoothing=eps), None, "n",
               lambda s, t: [v + math.log(p) for v, p in zip(s, prior)]),
        "ldam_drw": (LDAMLoss(COUNTS, 0.5, 30.0, weight=drw, label_smoothing=eps), drw, "w",
                     lambda s, t: [v - (30.0 * margins[t] if c == t else 0.0) for c, v in enumerate(s)]),
    }[name]
    logits, y_a, y_b = batch(9, seed=5)
    lam_y = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9, 0.0, 1.0, 0.7, 0.1])
    got = mixed_criterion(crit, logits, y_a, MixedLabels(y_b, lam_y))
    want = 0.0
    for y, coef in ((y_a.tolist(), lam_y.tolist()), (y_b.tolist(), [1 - v for v in lam_y.tolist()])):
        terms = _smoothed_terms(logits, y, eps, weight, adjust)
        den = len(y) if norm == "n" else sum(float(weight[t]) for t in y)
        want += sum(c * t for c, t in zip(coef, terms)) / den
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_mixing_with_gradient_accumulation_is_refused(tmp_path, capsys):
    from longtail.cli import main

    with pytest.raises(ConfigError, match="train.mix=mixup cannot be combined with train.accumulate=2"):
        tiny_train(**{"train.mix": "mixup", "train.accumulate": 2})
    code = main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "r"),
                 "train.mix=cutmix", "train.accumulate=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "cannot be combined with train.accumulate=2" in err[0]
    assert not (tmp_path / "r").exists()
