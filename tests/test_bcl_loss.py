"""BCL and SupCon losses vs slow float64 per-anchor loops, and the METHODS.md §2.7 invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.losses.bcl import BCLLoss
from longtail.losses.supcon import SupConLoss

FLAGS = [(True, True), (True, False), (False, True), (False, False)]  # (class_averaging, class_complement)
DT = torch.float64


def unit(*shape: int, seed: int = 0, dtype=DT) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


# ----------------------------------------------------------------------------------------------------
# slow references: METHODS.md §2.3 read literally, one anchor and one contrast entry at a time


def ref_bcl(emb, labels, protos, tau, averaging, complement):
    """Per-anchor losses (image-major; None where an anchor has no positive)."""
    n_img, n_view, _ = emb.shape
    entries = [(emb[n, v], int(labels[n]), ("sample", n, v)) for n in range(n_img) for v in range(n_view)]
    if complement:
        entries += [(protos[k], k, ("proto", k)) for k in range(protos.shape[0])]
    count: dict[int, int] = {}
    for _, lab, _ in entries:
        count[lab] = count.get(lab, 0) + 1
    losses = []
    for n in range(n_img):
        for v in range(n_view):
            z, y = emb[n, v], int(labels[n])
            others = [e for e in entries if e[2] != ("sample", n, v)]
            terms = []
            for vec, lab, _ in others:
                weight = (count[lab] - 1 if lab == y else count[lab]) if averaging else 1
                terms.append(torch.exp(torch.dot(z, vec) / tau) / weight)
            positives = [vec for vec, lab, _ in others if lab == y]
            if not positives:
                losses.append(None)
                continue
            pos_mean = sum(torch.dot(z, p) / tau for p in positives) / len(positives)
            losses.append(torch.log(torch.stack(terms).sum()) - pos_mean)
    return losses


def ref_supcon(emb, labels, tau):
    """SupCon L_out: −mean_p log(exp(z·z_p/τ) / Σ_{a≠i} exp(z·z_a/τ)); None where no positive."""
    n_img, n_view, _ = emb.shape
    flat = [(emb[n, v], int(labels[n])) for n in range(n_img) for v in range(n_view)]
    losses = []
    for i, (z, y) in enumerate(flat):
        denom = sum(torch.exp(torch.dot(z, a) / tau) for j, (a, _) in enumerate(flat) if j != i)
        logs = [torch.log(torch.exp(torch.dot(z, p) / tau) / denom)
                for j, (p, lab) in enumerate(flat) if j != i and lab == y]
        losses.append(-sum(logs) / len(logs) if logs else None)
    return losses


def ref_mean(losses):
    kept = [x for x in losses if x is not None]
    return sum(kept) / len(kept)


def grads(value, inputs):
    out = torch.autograd.grad(value, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(out, inputs)]


# (name, images, views, classes, labels): absent classes, repeated labels, B = 1, C = 1000, V = 1 and 3
CASES = [
    ("absent_repeated", 6, 2, 5, [0, 0, 2, 2, 2, 4]),
    ("b1", 1, 2, 3, [1]),
    ("c1000", 4, 2, 1000, [7, 999, 7, 0]),
    ("singletons", 5, 2, 6, [5, 1, 0, 3, 2]),
    ("one_class", 3, 2, 1, [0, 0, 0]),
    ("three_views", 4, 3, 4, [3, 1, 3, 3]),
    ("one_view", 5, 1, 4, [0, 0, 1, 2, 2]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("averaging,complement", FLAGS)
def test_bcl_matches_reference(case, averaging, complement):
    _, n, v, k, labels = case
    tau = 0.1
    emb = unit(n, v, 8, seed=n * 10 + v).requires_grad_()
    protos = unit(k, 8, seed=k + 1).requires_grad_()
    y = torch.tensor(labels)
    ref = ref_bcl(emb, y, protos, tau, averaging, complement)
    if all(x is None for x in ref):
        pytest.skip("no anchor has a positive in this configuration")
    loss = BCLLoss(tau, averaging, complement)(emb, y, protos)
    expect = ref_mean(ref)
    assert loss.dtype == DT
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)
    for got, want in zip(grads(loss, [emb, protos]), grads(expect, [emb, protos])):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    per = BCLLoss(tau, averaging, complement, reduction="none")(emb, y, protos)
    assert per.shape == (n * v,)
    torch.testing.assert_close(per.detach(), torch.stack([torch.zeros((), dtype=DT) if x is None else x.detach()
                                                          for x in ref]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_supcon_matches_reference(case):
    _, n, v, _, labels = case
    emb = unit(n, v, 8, seed=n * 10 + v).requires_grad_()
    y = torch.tensor(labels)
    ref = ref_supcon(emb, y, 0.07)
    if all(x is None for x in ref):
        pytest.skip("no anchor has a positive in this configuration")
    loss = SupConLoss(0.07)(emb, y)
    expect = ref_mean(ref)
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)
    torch.testing.assert_close(grads(loss, [emb])[0], grads(expect, [emb])[0], atol=1e-6, rtol=0)


def test_supcon_skips_anchors_without_positive():
    emb = unit(3, 1, 4)
    per = SupConLoss(reduction="none")(emb, torch.tensor([0, 0, 1]))
    assert per[2] == 0 and per[0] > 0
    assert SupConLoss()(emb, torch.tensor([0, 0, 1])).item() == pytest.approx(per[:2].mean().item())
    lone = SupConLoss()(emb.requires_grad_(), torch.tensor([0, 1, 2]))  # nobody has a positive
    lone.backward()
    assert lone.item() == 0 and torch.isfinite(emb.grad).all()


# ----------------------------------------------------------------------------------------------------
# METHODS.md §2.7 invariants


def test_reduces_to_supcon_with_both_flags_off():
    emb = unit(8, 2, 16, seed=3).requires_grad_()
    y = torch.tensor([0, 1, 1, 2, 2, 2, 5, 5])
    bcl = BCLLoss(0.1, class_averaging=False, class_complement=False)(emb, y, unit(6, 16))
    sup = SupConLoss(0.1)(emb, y)
    assert bcl.item() == pytest.approx(sup.item(), abs=1e-12)
    torch.testing.assert_close(grads(bcl, [emb])[0], grads(sup, [emb])[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("b", [1, 3, 8])
def test_one_class_batch_is_supcon_minus_log(b):
    emb = unit(b, 2, 16, seed=b).requires_grad_()
    y = torch.full((b,), 2)
    bcl = BCLLoss(0.1, class_averaging=True, class_complement=False)(emb, y)
    sup = SupConLoss(0.1)(emb, y)
    assert bcl.item() == pytest.approx(sup.item() - math.log(2 * b - 1), abs=1e-12)
    torch.testing.assert_close(grads(bcl, [emb])[0], grads(sup, [emb])[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("b", [1, 4])
def test_equal_embeddings_closed_form(b):
    emb = unit(1, 1, 16).expand(b, 2, 16).contiguous()
    y = torch.zeros(b, dtype=torch.long)
    assert BCLLoss(0.1, True, False)(emb, y).item() == pytest.approx(0.0, abs=1e-12)
    assert SupConLoss(0.1)(emb, y).item() == pytest.approx(math.log(2 * b - 1), abs=1e-12)


def test_absent_class_contributes_one_unit_weight_term():
    tau = 0.1
    emb, protos = unit(4, 2, 8, seed=1), unit(5, 8, seed=2)
    y = torch.tensor([0, 0, 1, 3])  # classes 2 and 4 absent
    loss = BCLLoss(tau, reduction="none")
    per = loss(emb, y, protos)
    assert torch.isfinite(per).all()
    moved = protos.clone()
    moved[4] = unit(8, seed=9)
    per_moved = loss(emb, y, moved)
    flat, ys = emb.reshape(8, 8), y.repeat_interleave(2)
    for i in range(8):
        pos = [flat[j] for j in range(8) if j != i and ys[j] == ys[i]] + [protos[ys[i]]]
        pos_mean = sum(torch.dot(flat[i], p) / tau for p in pos) / len(pos)
        d = torch.exp(per[i] + pos_mean)  # the full denominator D_i, recovered from L_i
        d_new = d - torch.exp(flat[i] @ protos[4] / tau) + torch.exp(flat[i] @ moved[4] / tau)
        assert per_moved[i].item() == pytest.approx((torch.log(d_new) - pos_mean).item(), abs=1e-10)


def test_per_anchor_vector_is_image_major_and_excludes_prototypes():
    emb, protos = unit(3, 2, 8, seed=4), unit(50, 8)
    y = torch.tensor([4, 9, 4])
    per = BCLLoss(reduction="none")(emb, y, protos)
    assert per.shape == (6,)  # 2B anchors, not 2B + C: prototypes are never anchors
    swapped = BCLLoss(reduction="none")(emb[[1, 0, 2]], y[[1, 0, 2]], protos)
    torch.testing.assert_close(swapped, per[[2, 3, 0, 1, 4, 5]])


def test_positive_counts_closed_form():
    tau = 0.1
    s = lambda a, b: torch.dot(a, b) / tau  # noqa: E731
    # complement on, B = 1: P(i) = {other view, own prototype} (|P| = 2), own class m = 3 → weight 1/2.
    emb, protos = unit(1, 2, 8, seed=5), unit(3, 8, seed=6)
    z, z2 = emb[0, 0], emb[0, 1]
    per = BCLLoss(tau, reduction="none")(emb, torch.tensor([1]), protos)
    d = (torch.exp(s(z, z2)) + torch.exp(s(z, protos[1]))) / 2 + torch.exp(s(z, protos[0])) + torch.exp(s(z, protos[2]))
    assert per[0].item() == pytest.approx((torch.log(d) - (s(z, z2) + s(z, protos[1])) / 2).item(), abs=1e-10)
    # complement off, two singleton classes: P(i) = {other view} (|P| = 1), other class weight 1/2.
    emb = unit(2, 2, 8, seed=7)
    z, z2 = emb[0, 0], emb[0, 1]
    per = BCLLoss(tau, class_complement=False, reduction="none")(emb, torch.tensor([0, 1]))
    d = torch.exp(s(z, z2)) + (torch.exp(s(z, emb[1, 0])) + torch.exp(s(z, emb[1, 1]))) / 2
    assert per[0].item() == pytest.approx((torch.log(d) - s(z, z2)).item(), abs=1e-10)


@pytest.mark.parametrize("complement", [True, False])
def test_every_anchor_has_a_positive_with_two_views(complement):
    emb, protos = unit(16, 2, 8, seed=8), unit(16, 8)
    y = torch.arange(16)  # every class a singleton: the hardest case for |P(i)|
    loss = BCLLoss(class_complement=complement)
    per = BCLLoss(class_complement=complement, reduction="none")(emb, y, protos)
    assert torch.isfinite(per).all() and (per != 0).all()
    assert loss(emb, y, protos).item() == pytest.approx(per.mean().item(), abs=1e-12)


@pytest.mark.parametrize("averaging,complement,invariant", [(True, False, True), (True, True, False),
                                                             (False, False, False)])
def test_class_averaging_invariance(averaging, complement, invariant):
    emb, protos = unit(6, 2, 8, seed=10), unit(4, 8)
    y = torch.tensor([0, 0, 1, 2, 2, 3])
    k = 2
    loss = BCLLoss(0.1, averaging, complement, reduction="none")
    per = loss(emb, y, protos)
    grown = loss(torch.cat([emb, emb[y == k]]), torch.cat([y, y[y == k]]), protos)[:12]
    others = (y != k).repeat_interleave(2)
    same = torch.allclose(grown[others], per[others], atol=1e-12, rtol=0)
    assert same is invariant


def test_gradient_reaches_classifier_through_prototypes():
    torch.manual_seed(0)
    k, d = 5, 6
    w = nn.Parameter(torch.randn(k, d, dtype=DT))
    q = nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).to(DT)
    emb = unit(4, 2, 4, seed=11).requires_grad_()
    y = torch.tensor([0, 1, 1, 3])
    params = [w, *q.parameters()]
    on = grads(BCLLoss(0.1)(emb, y, F.normalize(q(w), dim=1)), params)
    assert on[0].abs().max() > 1e-6
    assert all(g.abs().max() > 1e-6 for g in on[1:] if g.dim() == 2)  # both Linear weights of q
    off = grads(BCLLoss(0.1, class_complement=False)(emb, y, F.normalize(q(w), dim=1)), params)
    assert all((g == 0).all() for g in off)


def test_permutation_invariance():
    emb, protos = unit(7, 2, 8, seed=12), unit(4, 8)
    y = torch.tensor([0, 1, 1, 3, 3, 3, 0])
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    for a, c in FLAGS:
        loss = BCLLoss(0.1, a, c)
        ref = loss(emb, y, protos)
        assert loss(emb[perm], y[perm], protos).item() == pytest.approx(ref.item(), abs=1e-12)
        assert loss(emb.flip(1), y, protos).item() == pytest.approx(ref.item(), abs=1e-12)


def test_finite_in_bf16_autocast_and_computed_in_float32():
    torch.manual_seed(0)
    enc, head = nn.Linear(16, 32), nn.Linear(6, 32)
    x, w = torch.randn(8, 2, 16), torch.randn(10, 6)
    y = torch.tensor([0, 1, 1, 2, 2, 2, 9, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = F.normalize(enc(x), dim=-1).to(torch.bfloat16)
        protos = F.normalize(head(w), dim=-1).to(torch.bfloat16)
        loss = BCLLoss(0.05)(emb, y, protos)
        sup = SupConLoss(0.05)(emb, y)
    assert loss.dtype == torch.float32 and sup.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(sup)
    # the same bf16 values outside autocast: equal only if the matmul ran in float32 under autocast
    assert loss.item() == pytest.approx(BCLLoss(0.05)(emb.float(), y, protos.float()).item(), abs=1e-6)
    assert sup.item() == pytest.approx(SupConLoss(0.05)(emb.float(), y).item(), abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in [*enc.parameters(), *head.parameters()])


@pytest.mark.parametrize("cls,args", [(BCLLoss, ()), (SupConLoss, ())])
def test_local_ranges_recombine_to_global_loss(cls, args):
    emb, protos = unit(6, 2, 8, seed=13).requires_grad_(), unit(4, 8)
    y = torch.tensor([0, 2, 2, 1, 0, 2])
    extra = (protos,) if cls is BCLLoss else ()
    full = cls()(emb, y, *extra)
    ranges = [(0, 2), (2, 5), (5, 6)]
    parts = sum((e - s) / 6 * cls()(emb, y, *extra, local_range=(s, e)) for s, e in ranges)
    assert parts.item() == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(grads(parts, [emb])[0], grads(full, [emb])[0], atol=1e-12, rtol=0)
    per = cls(reduction="none")(emb, y, *extra)
    torch.testing.assert_close(cls(reduction="none")(emb, y, *extra, local_range=(2, 5)), per[4:10])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_and_gpu_agree():
    emb, protos = unit(64, 2, 128, dtype=torch.float32), unit(1000, 128, dtype=torch.float32)
    y = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(0))
    for a, c in FLAGS:
        cpu = BCLLoss(0.07, a, c)(emb, y, protos)
        gpu = BCLLoss(0.07, a, c)(emb.cuda(), y.cuda(), protos.cuda())
        assert gpu.device.type == "cuda" and abs(gpu.item() - cpu.item()) < 1e-5


# ----------------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"temperature": -0.1}, "temperature must be a finite number > 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
    ({"temperature": "0.1"}, "temperature must be a finite number > 0"),
    ({"reduction": "sum"}, "reduction must be one of mean, none"),
    ({"class_averaging": "false"}, "class_averaging must be True or False"),
    ({"class_complement": 0}, "class_complement must be True or False"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BCLLoss(**kwargs)
    if set(kwargs) <= {"temperature", "reduction"}:
        with pytest.raises(ValueError, match=match):
            SupConLoss(**kwargs)


EMB, LAB, PRO = unit(4, 2, 8), torch.tensor([0, 1, 1, 2]), unit(3, 8)


@pytest.mark.parametrize("emb,lab,pro,rng,match", [
    (EMB.reshape(8, 8), LAB, PRO, None, r"embeddings must be a \[N, V, D\] tensor .* got \(8, 8\)"),
    (EMB.long(), LAB, PRO, None, "embeddings must be a float tensor"),
    (EMB[:0], LAB[:0], PRO, None, "embeddings must be non-empty"),
    (EMB, LAB.repeat(2), PRO, None, r"labels must be a \[N\] = \[4\] tensor .* got \(8,\)"),
    (EMB, LAB.float(), PRO, None, "labels must be integer class indices"),
    (EMB, torch.tensor([0, 1, 1, 3]), PRO, None, r"labels must lie in \[0, 3\) .* max 3"),
    (EMB, torch.tensor([0, -1, 1, 2]), PRO, None, r"labels must lie in \[0, 3\) .* min -1"),
    (EMB, LAB, PRO[:, :4], None, r"prototypes must be a \[C, D\] = \[num_classes, 8\] tensor"),
    (EMB, LAB, PRO[0], None, r"prototypes must be a \[C, D\]"),
    (EMB, LAB, PRO.long(), None, "prototypes must be a float tensor"),
    (EMB, LAB, None, None, "prototypes .* are required with class_complement=True"),
    (EMB, LAB, PRO, (2, 2), "local_range must be a pair"),
    (EMB, LAB, PRO, (0, 5), "local_range must be a pair .* N = 4"),
    (EMB, LAB, PRO, (-1, 2), "local_range must be a pair"),
    (EMB, LAB, PRO, (0, 1, 2), "local_range must be a pair"),
    (EMB, LAB, PRO, (0.0, 2.0), "local_range must be a pair"),
])
def test_bad_forward_inputs(emb, lab, pro, rng, match):
    with pytest.raises(ValueError, match=match):
        BCLLoss()(emb, lab, pro, local_range=rng)


def test_negative_label_without_prototypes():
    with pytest.raises(ValueError, match="labels must be class indices >= 0"):
        BCLLoss(class_complement=False)(EMB, torch.tensor([0, -1, 1, 2]))


@pytest.mark.parametrize("emb,lab,rng,match", [
    (EMB[0], LAB, None, r"embeddings must be a \[N, V, D\]"),
    (EMB, LAB[:3], None, r"labels must be a \[N\] = \[4\]"),
    (EMB, LAB.bool(), None, "labels must be integer class indices"),
    (EMB, LAB, (3, 1), "local_range must be a pair"),
])
def test_supcon_bad_inputs(emb, lab, rng, match):
    with pytest.raises(ValueError, match=match):
        SupConLoss()(emb, lab, local_range=rng)
