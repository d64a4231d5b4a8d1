"""BBL (reconstruction) loss: slow float64 references of R1–R4, METHODS.md §3.7 invariants, bad inputs."""

from __future__ import annotations

from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.data.splits import lt_counts
from longtail.losses.bbl import BBLLoss, BBLOutput, bbl_class_weights, bbl_sets

COUNTS6 = [40, 20, 10, 5, 2, 1]


# ----------------------------------------------------------------------------------------------------
# slow reference: one anchor at a time, sets built as Python lists, straight from §3.3–3.4 / §3.6


def dot(u, v):
    return (u * v).sum()


def log_mean_exp(vals):
    return torch.log(sum(torch.exp(v) for v in vals) / len(vals))


def ref_bbl(emb, labels, protos, tau, omega, lam=1.0, variant="r1", adj=None, repulsion_only=False,
            batch_pos=False, queue=(), rng=None):
    """emb [B, 2, D], protos [K, D] (float64); omega, adj: per-class lists; queue: (vector, class) pairs.

    ``rng = (start, end)``: only images start … end−1 are anchors. Both terms are then scaled so that
    the anchor-count-weighted average of the ranges' losses, Σ (end − start)/B · loss, is the full-batch
    loss: L_GB divides by its 2·(end − start) anchors, L_LB by (end − start)/B times the number of
    qualifying anchors of the WHOLE batch (the full-batch mean is over all of them).
    """
    labels = [int(v) for v in labels]
    B, K = len(labels), protos.shape[0]
    start, end = rng or (0, B)
    adj = adj if adj is not None else [0.0] * K
    g_terms, l_terms = [], []
    qualifying = 0  # anchors of the whole batch that have a local term
    for i in range(B):
        y = labels[i]
        for a in (0, 1):
            z, other = emb[i, a], emb[i, 1 - a]
            s_other = dot(z, other) / tau
            s_cent = [dot(z, protos[c]) / tau + adj[c] for c in range(K)]
            local_pos = [emb[j, b] for j in range(B) if j != i and labels[j] == y for b in (0, 1)]
            if variant == "r2":
                pos = [s_other, s_cent[y]] + ([dot(z, p) / tau for p in local_pos] if batch_pos else [])
                g = -sum(pos) / len(pos)
            else:
                lse = torch.log(sum(torch.exp(t) for t in [s_other] + s_cent))
                g = -0.5 * ((s_other - lse) + (s_cent[y] - lse))
            S = {c: [emb[j, b] for j in range(B) if j != i and labels[j] == c for b in (0, 1)] for c in range(K)}
            for vec, c in queue:
                if c != y:
                    S[c].append(vec)
            negs = [c for c in range(K) if c != y and S[c]]
            term = None
            if variant == "r2":
                if negs:
                    term = torch.log(sum(torch.exp(log_mean_exp([dot(z, k) / tau for k in S[c]])) for c in negs))
            elif local_pos:
                d_loc = sum(sum(torch.exp(dot(z, k) / tau) for k in S[c]) / len(S[c]) for c in range(K) if S[c])
                term = torch.log(d_loc) - sum(dot(z, p) / tau for p in local_pos) / len(local_pos)
            elif repulsion_only and negs:
                term = torch.log(sum(torch.exp(log_mean_exp([dot(z, k) / tau for k in S[c]])) for c in negs)
                                 / len(negs))
            qualifying += term is not None
            if start <= i < end:
                g_terms.append(omega[y] * g)
                if term is not None:
                    l_terms.append(term)
    l_gb = sum(g_terms) / (2 * (end - start))
    if qualifying:
        l_lb = sum(l_terms, torch.zeros((), dtype=emb.dtype)) / (qualifying * (end - start) / B)
    else:
        l_lb = torch.zeros((), dtype=emb.dtype)
    return l_gb + lam * l_lb, l_gb, l_lb


def batch(B, K, D, seed, labels=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(B, 2, D, generator=g, dtype=dtype), dim=-1).requires_grad_()
    protos = F.normalize(torch.randn(K, D, generator=g, dtype=dtype), dim=-1).requires_grad_()
    y = torch.randint(0, K, (B,), generator=g) if labels is None else torch.tensor(labels)
    return emb, y, protos


def omega_list(counts, gamma):
    return bbl_class_weights(counts, gamma).float().double().tolist()  # the module keeps a float32 buffer


def log_prior_list(counts):
    n = torch.tensor(counts, dtype=torch.float64)
    return (n / n.sum()).log().float().double().tolist()


def assert_close_with_grads(out, ref, inputs, atol=1e-9):
    """Values and input gradients agree (float64 on both sides, so far tighter than the 1e-6 goal)."""
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=atol)
    g_out = torch.autograd.grad(out[0], inputs, allow_unused=True, retain_graph=True)
    g_ref = torch.autograd.grad(ref[0], inputs, allow_unused=True)
    for x, a, b in zip(inputs, g_out, g_ref):
        zero = torch.zeros_like(x)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b, atol=atol, rtol=atol)


LABEL_CASES = [
    (None, 6, 10),  # random labels, repeats
    ([0, 0, 0, 2, 2, 5], 6, 6),  # absent classes 1, 3, 4
    ([3, 1, 1, 4, 0, 3, 5], 6, 7),  # singletons mixed with pairs
    ([2], 6, 1),  # B = 1
    ([1, 1, 1, 1], 6, 4),  # one class only: no negatives
]


@pytest.mark.parametrize("labels,K,B", LABEL_CASES)
@pytest.mark.parametrize("opts", [
    dict(gamma=0.5), dict(gamma=0.0, lam=0.5), dict(gamma=1.0, local_repulsion_only=True),
    dict(global_mode="logit_adjust", kappa=1.0), dict(global_mode="logit_adjust", kappa=0.7, local_repulsion_only=True),
])
def test_r1_matches_reference(labels, K, B, opts):
    emb, y, protos = batch(B, K, 5, seed=B + K, labels=labels)
    tau = 0.2
    loss = BBLLoss(COUNTS6, temperature=tau, **opts)
    la = opts.get("global_mode") == "logit_adjust"
    omega = [1.0] * K if la else omega_list(COUNTS6, opts["gamma"])
    adj = [opts["kappa"] * v for v in log_prior_list(COUNTS6)] if la else None
    out = loss(emb, y, protos)
    ref = ref_bbl(emb, y, protos, tau, omega, lam=opts.get("lam", 1.0), adj=adj,
                  repulsion_only=opts.get("local_repulsion_only", False))
    assert isinstance(out, BBLOutput) and out.total.dtype == torch.float64
    assert_close_with_grads(out, ref, (emb, protos))


@pytest.mark.parametrize("labels,K,B", LABEL_CASES)
@pytest.mark.parametrize("batch_pos", [False, True])
def test_r2_matches_reference(labels, K, B, batch_pos):
    emb, y, protos = batch(B, K, 4, seed=3 * B + K, labels=labels)
    loss = BBLLoss(COUNTS6, temperature=0.1, gamma=0.5, variant="r2", r2_batch_positives=batch_pos)
    ref = ref_bbl(emb, y, protos, 0.1, omega_list(COUNTS6, 0.5), variant="r2", batch_pos=batch_pos)
    assert_close_with_grads(loss(emb, y, protos), ref, (emb, protos))


def test_float32_path_matches_reference():
    emb, y, protos = batch(12, 6, 8, seed=5)
    loss = BBLLoss(COUNTS6, temperature=0.1)
    out = loss(emb.detach().float(), y, protos.detach().float())
    ref = ref_bbl(emb, y, protos, 0.1, omega_list(COUNTS6, 0.5))
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total.double(), ref[0].detach(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# §3.7 invariants


@pytest.mark.parametrize("labels", [[0, 0, 1], [2, 0, 2, 2, 1], [1], [0, 1, 2, 3]])
def test_relation_to_bcl_sets(labels):
    """G⁺ ∪ L⁺ = BCL's P(i), G ∪ (∪_c S_c) = BCL's A \\ {i}, and the global and local parts are disjoint."""
    K, B = 4, len(labels)
    sets = bbl_sets(torch.tensor(labels), K)
    # targets of BCL's contrast set A: (label, image id or None for a centre), image-major like the anchors
    # (row 2i + a is view a of image i, the order of every contrastive loss of the toolbox)
    targets = [(labels[r // 2], r // 2) for r in range(2 * B)] + [(k, None) for k in range(K)]
    for r in range(2 * B):
        y, img = labels[r // 2], r // 2
        bcl_p = {t for t in range(len(targets)) if t != r and targets[t][0] == y}
        bcl_a = {t for t in range(len(targets)) if t != r}
        g_pos = {t for t in range(len(targets)) if t == r ^ 1 or (targets[t][1] is None and targets[t][0] == y)}
        l_pos = {t for t in range(2 * B) if targets[t][0] == y and targets[t][1] != img}
        s_all = {t for t in range(2 * B) if targets[t][1] != img}
        as_set = {name: set(getattr(sets, name)[r].nonzero().flatten().tolist()) for name in sets._fields}
        assert as_set["global_pos"] == g_pos and as_set["local_pos"] == l_pos and as_set["local_contrast"] == s_all
        assert as_set["global_pos"] | as_set["local_pos"] == bcl_p
        assert as_set["global_contrast"] | as_set["local_contrast"] == bcl_a
        assert not as_set["global_contrast"] & as_set["local_contrast"]


def test_class_averaging_invariance():
    """Duplicating every embedding of a negative class leaves D_loc (so ℓ_LB) of other anchors unchanged."""
    emb, y, protos = batch(6, 4, 5, seed=11, labels=[0, 0, 1, 1, 2, 2])
    loss = BBLLoss([5, 4, 3, 2], temperature=0.1)
    base = loss(emb, y, protos, local_range=(0, 4))  # anchors: classes 0 and 1 only; class 2 is a negative
    dup = loss(torch.cat([emb, emb[4:]]), torch.cat([y, y[4:]]), protos, local_range=(0, 4))
    torch.testing.assert_close(dup.local_term, base.local_term, atol=1e-12, rtol=0)
    torch.testing.assert_close(dup.total, base.total, atol=1e-12, rtol=0)
    # control: a class-2 image that is not a copy does change the denominators
    other = F.normalize(torch.randn(1, 2, 5, dtype=torch.float64), dim=-1)
    moved = loss(torch.cat([emb, other]), torch.cat([y, y[4:5]]), protos, local_range=(0, 4))
    assert abs(moved.local_term.item() - base.local_term.item()) > 1e-6


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_omega_normalisation(gamma):
    counts = lt_counts(500, 100, 100)
    n = torch.tensor(counts, dtype=torch.float64)
    w = bbl_class_weights(counts, gamma)
    torch.testing.assert_close((n * w).sum(), n.sum(), atol=1e-9, rtol=0)
    if gamma == 0:
        torch.testing.assert_close(w, torch.ones_like(w))
    if gamma == 1:
        torch.testing.assert_close(n * w, torch.full_like(w, n.sum().item() / len(counts)))


def test_omega_ranges_cifar100_lt():
    """METHODS.md §3.2: Ω spans 0.56–5.55 (γ = 0.5) and 0.22–21.7 (γ = 1) on CIFAR-100-LT IF 100."""
    counts = lt_counts(500, 100, 100)
    w = bbl_class_weights(counts, 0.5)
    assert (round(w.min().item(), 2), round(w.max().item(), 2)) == (0.56, 5.55)
    w = bbl_class_weights(counts, 1.0)
    assert (round(w.min().item(), 2), round(w.max().item(), 1)) == (0.22, 21.7)
    assert w[-1] == w.max() and w[0] == w.min()  # the rarest class weighs most


def test_omega_does_not_depend_on_the_batch():
    """The buffer never changes, and each image's global contribution is the same in any batch."""
    loss = BBLLoss(COUNTS6, gamma=1.0)
    before = loss.omega.clone()
    a, ya, protos = batch(5, 6, 4, seed=1, labels=[0, 0, 0, 0, 5])
    b, yb, _ = batch(3, 6, 4, seed=2, labels=[5, 5, 3])
    whole = loss(torch.cat([a, b]), torch.cat([ya, yb]), protos).global_term
    parts = (10 * loss(a, ya, protos).global_term + 6 * loss(b, yb, protos).global_term) / 16
    torch.testing.assert_close(whole, parts, atol=1e-12, rtol=0)
    torch.testing.assert_close(loss.omega, bbl_class_weights(COUNTS6, 1.0).float())
    assert torch.equal(loss.omega, before)


def test_gamma_zero_is_plain_softmax_with_two_positives():
    emb, y, protos = batch(9, 6, 5, seed=4)
    tau = 0.1
    out = BBLLoss(COUNTS6, temperature=tau, gamma=0.0)(emb, y, protos)
    E = torch.cat([emb[:, 0], emb[:, 1]])
    other = torch.cat([emb[:, 1], emb[:, 0]])
    logits = torch.cat([(E * other).sum(1, keepdim=True), E @ protos.T], 1) / tau  # [2B, C + 1]
    Y = y.repeat(2)
    naive = 0.5 * (F.cross_entropy(logits, torch.zeros_like(Y)) + F.cross_entropy(logits, Y + 1))
    torch.testing.assert_close(out.global_term, naive, atol=1e-10, rtol=0)


def test_singletons():
    emb, y, protos = batch(5, 6, 4, seed=8, labels=[4, 0, 2, 5, 1])
    out = BBLLoss(COUNTS6)(emb, y, protos)
    assert out.local_term.item() == 0.0 and torch.isfinite(out.global_term)
    rep = BBLLoss(COUNTS6, local_repulsion_only=True)(emb, y, protos)
    ref = ref_bbl(emb, y, protos, 0.1, omega_list(COUNTS6, 0.5), repulsion_only=True)
    assert torch.isfinite(rep.local_term) and rep.local_term.item() != 0.0
    torch.testing.assert_close(rep.local_term, ref[2], atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["r1", "r2", "r3", "r4"])
def test_gradients_reach_classifier_through_centres(variant):
    torch.manual_seed(0)
    K, d, D = 6, 8, 5
    W = nn.Parameter(torch.randn(K, d))
    q = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, D))
    emb, y, _ = batch(8, K, D, seed=3, dtype=torch.float32)
    loss = BBLLoss(COUNTS6, variant=variant)
    loss(emb, y, F.normalize(q(W), dim=1)).total.backward()
    assert W.grad is not None and W.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q[0].parameters())


@pytest.mark.parametrize("variant", ["r1", "r2", "r4"])
def test_permutation_and_view_swap_invariance(variant):
    emb, y, protos = batch(9, 6, 5, seed=21)
    loss = BBLLoss(COUNTS6, variant=variant, local_repulsion_only=variant != "r2").eval()
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    base = loss(emb, y, protos)
    for e2, y2 in ((emb[perm], y[perm]), (emb.flip(1), y)):
        out = loss(e2, y2, protos)
        for a, b in zip(out, base):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["r1", "r2", "r3", "r4"])
def test_finite_at_low_temperature_with_bf16_autocast(variant):
    torch.manual_seed(0)
    net = nn.Linear(16, 8)
    protos = F.normalize(torch.randn(6, 8), dim=1).requires_grad_()
    y = torch.tensor([0, 0, 1, 2, 2, 2, 5, 3])
    loss = BBLLoss(COUNTS6, temperature=0.05, variant=variant)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = F.normalize(net(torch.randn(8, 2, 16)), dim=-1)
        assert emb.dtype == torch.bfloat16
        out = loss(emb, y, protos.to(torch.bfloat16))
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in out)
    out.total.backward()
    assert torch.isfinite(net.weight.grad).all() and torch.isfinite(protos.grad).all()


def test_mode_equivalence_kappa_zero_equals_gamma_zero():
    emb, y, protos = batch(10, 6, 5, seed=13)
    a = BBLLoss(COUNTS6, global_mode="logit_adjust", kappa=0.0)(emb, y, protos)
    b = BBLLoss(COUNTS6, global_mode="reweight", gamma=0.0)(emb, y, protos)
    assert_close_with_grads(a, b, (emb, protos), atol=1e-12)
    c = BBLLoss(COUNTS6, global_mode="logit_adjust", kappa=1.0)(emb, y, protos)
    assert abs(c.global_term.item() - a.global_term.item()) > 1e-3  # the prior does act


@pytest.mark.parametrize("opts", [{}, {"variant": "r2"}, {"local_repulsion_only": True}])
@pytest.mark.parametrize("ranges", [[(0, 4), (4, 10)], [(0, 5), (5, 10)]])
def test_local_range_matches_full_batch(opts, ranges):
    """Per-rank ranges, weighted by their image shares, give the full-batch loss and gradients; with
    equal shares (DDP) that is the plain mean of the ranks' losses, which is what DDP averages."""
    emb, y, protos = batch(10, 6, 5, seed=17, labels=[0, 0, 1, 2, 2, 2, 3, 0, 5, 1])
    loss = BBLLoss(COUNTS6, **opts)
    full = loss(emb, y, protos)
    parts = [loss(emb, y, protos, local_range=r) for r in ranges]
    ref_opts = {"variant": opts.get("variant", "r1"), "repulsion_only": opts.get("local_repulsion_only", False)}
    for r, p in zip(ranges, parts):  # each range against the reference restricted to its anchors
        ref = ref_bbl(emb, y, protos, 0.1, omega_list(COUNTS6, 0.5), rng=r, **ref_opts)
        for a, b in zip(p, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # both terms combine with the ranges' image shares as weights (equal shares: a plain mean, DDP's)
    gb = sum((e - s) * p.global_term for (s, e), p in zip(ranges, parts)) / 10
    lb = sum((e - s) * p.local_term for (s, e), p in zip(ranges, parts)) / 10
    torch.testing.assert_close(gb, full.global_term, atol=1e-12, rtol=0)
    torch.testing.assert_close(lb, full.local_term, atol=1e-12, rtol=0)
    g_full = torch.autograd.grad(full.total, emb)[0]
    g_parts = torch.autograd.grad(gb + lb, emb)[0]
    torch.testing.assert_close(g_parts, g_full, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------------
# R3: epoch memory


def test_r3_memory_roll_over_and_fallback():
    K, D, tau, gamma = 6, 4, 0.1, 0.5
    loss = BBLLoss(COUNTS6, temperature=tau, gamma=gamma, variant="r3")
    e1, y1, protos = batch(6, K, D, seed=31, labels=[0, 0, 1, 3, 3, 3])
    e2, y2, _ = batch(4, K, D, seed=32, labels=[1, 3, 5, 5])

    def omega_from(seen):  # +1 smoothing of the in-epoch counts
        n = torch.tensor(seen, dtype=torch.float64) + 1
        return (n.pow(-gamma) * n.sum() / (n * n.pow(-gamma)).sum()).tolist()

    loss.start_epoch()  # epoch 0: nothing to roll over
    assert not loss.memory_valid.any()
    out1 = loss(e1, y1, protos)  # no memory yet: the prototypes, and Ω ≡ 1 before any image was seen
    assert_close_with_grads(out1, ref_bbl(e1, y1, protos, tau, [1.0] * K), (e1, protos))
    seen1 = torch.bincount(y1, minlength=K).tolist()
    assert loss.epoch_count.tolist() == seen1
    out2 = loss(e2, y2, protos)
    assert_close_with_grads(out2, ref_bbl(e2, y2, protos, tau, omega_from(seen1)), (e2, protos))
    loss.eval()
    loss(e2, y2, protos)  # evaluation never accumulates
    assert loss.epoch_count.tolist() == (torch.tensor(seen1) + torch.bincount(y2, minlength=K)).tolist()
    loss.train()

    loss.start_epoch()
    all_e, all_y = torch.cat([e1, e2]).detach(), torch.cat([y1, y2])
    expected = protos.detach().clone()
    for c in range(K):  # classes 2 and 4 were never seen: they keep the prototypes
        members = [all_e[i, v] for i in range(len(all_y)) if all_y[i] == c for v in (0, 1)]
        if members:
            expected[c] = F.normalize(sum(members), dim=0)
    assert loss.memory_valid.tolist() == [True, True, False, True, False, True]
    assert loss.epoch_count.sum() == 0 and loss.epoch_sum.abs().sum() == 0
    out3 = loss(e1, y1, protos)
    # the memory is kept in float32, so this comparison is at float32 precision
    assert_close_with_grads(out3, ref_bbl(e1, y1, expected, tau, [1.0] * K), (e1,), atol=1e-6)
    g = torch.autograd.grad(out3.total, protos)[0]  # only the fallback classes reach the classifier
    assert g[[0, 1, 3, 5]].abs().sum() == 0 and g[[2, 4]].abs().sum() > 0

    clone = BBLLoss(COUNTS6, temperature=tau, gamma=gamma, variant="r3")
    clone.load_state_dict(loss.state_dict())  # the memory is checkpointable
    torch.testing.assert_close(clone.eval()(e2, y2, protos).total, loss.eval()(e2, y2, protos).total)


# ----------------------------------------------------------------------------------------------------
# R4: class-balanced queue


def queue_contents(loss, c):
    return {tuple(row) for row in loss.queue[c, : int(loss.queue_len[c])].tolist()}


def test_r4_queue_is_class_balanced_fifo():
    K = 3
    loss = BBLLoss([3, 2, 1], variant="r4", queue_size=7)  # 7 // 3 = 2 slots per class
    assert loss.queue_slots == 2
    model = [deque(maxlen=2) for _ in range(K)]
    for seed, labels in enumerate([[0, 1], [0, 0, 2], [1], [2, 2, 2, 0]]):
        emb, y, protos = batch(len(labels), K, 3, seed=seed)
        loss(emb, torch.tensor(labels), protos)
        for i, c in enumerate(labels):  # image-major order: view 1 then view 2 of each image
            for v in (0, 1):
                model[c].append(tuple(emb[i, v].float().tolist()))  # the queue stores float32
        for c in range(K):
            assert queue_contents(loss, c) == set(model[c])
    assert loss.queue_len.tolist() == [2, 2, 2]
    loss.eval()
    loss(*batch(2, K, 3, seed=9, labels=[1, 1])[:2], protos)
    assert queue_contents(loss, 1) == set(model[1])  # evaluation never enqueues
    assert BBLLoss(COUNTS6, variant="r4", queue_size=4).queue_slots == 1  # at least one slot per class


@pytest.mark.parametrize("repulsion_only", [False, True])
def test_r4_queue_negatives_enter_the_local_denominator(repulsion_only):
    K, tau = 6, 0.1
    loss = BBLLoss(COUNTS6, temperature=tau, variant="r4", queue_size=12, local_repulsion_only=repulsion_only)
    e1, y1, protos = batch(5, K, 4, seed=41, labels=[0, 4, 4, 2, 5])
    loss(e1, y1, protos)  # fills the queue (2 slots per class)
    # image-major, rounded to float32 as the queue stores them
    entries = [(e1[i, v].detach().float().double(), int(y1[i])) for i in range(5) for v in (0, 1)]
    # class 4 brought two images (4 entries) for 2 slots: the FIFO keeps the second image's views
    queue = entries[:2] + entries[4:]
    e2, y2, _ = batch(5, K, 4, seed=42, labels=[0, 0, 1, 4, 3])
    ref = ref_bbl(e2, y2, protos, tau, omega_list(COUNTS6, 0.5), queue=queue, repulsion_only=repulsion_only)
    train_out = loss(e2, y2, protos)  # a training step contrasts with the queue *before* its own enqueue
    assert_close_with_grads(train_out, ref, (e2, protos))
    no_queue = ref_bbl(e2, y2, protos, tau, omega_list(COUNTS6, 0.5), repulsion_only=repulsion_only)
    assert abs(train_out.local_term.item() - no_queue[2].item()) > 1e-4


# ----------------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=-0.5), "gamma must be a finite number >= 0"),
    (dict(gamma=float("nan")), "gamma must be a finite number"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(temperature=-0.1), "temperature must be"),
    (dict(lam=-1.0), "lam must be"),
    (dict(kappa=float("inf")), "kappa must be"),
    (dict(global_mode="prior"), "global_mode must be one of"),
    (dict(variant="r5"), "variant must be one of"),
    (dict(queue_size=0), "queue_size must be an integer >= 1"),
    (dict(queue_size=2.5), "queue_size must be an integer"),
    (dict(variant="r2", local_repulsion_only=True), "local_repulsion_only has no effect"),
    (dict(r2_batch_positives=True), "r2_batch_positives only applies"),
    (dict(local_repulsion_only="yes"), "must be True or False"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BBLLoss(COUNTS6, **kwargs)


@pytest.mark.parametrize("counts,match", [([3, 0, 1], "must be > 0"), ([], "non-empty"), ([[1, 2]], "1-D")])
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        BBLLoss(counts)
    with pytest.raises(ValueError, match=match):
        bbl_class_weights(counts, 0.5)


def test_bad_forward_inputs():
    loss = BBLLoss(COUNTS6)
    emb, y, protos = batch(4, 6, 5, seed=0)
    cases = [
        ((torch.randn(4, 3, 5), y, protos), "V = 2"),
        ((torch.randn(4, 5), y, protos), r"\[B, 2, D\]"),
        ((torch.randn(0, 2, 5), y[:0], protos), "B = 0"),
        ((emb, y[:3], protos), r"labels must be \[B\] = \[4\]"),
        ((emb, y.float(), protos), "integer class indices"),
        ((emb, y, protos[:5]), r"prototypes must be \[K, D\] = \[6, 5\]"),
        ((emb, y, torch.randn(6, 4)), r"prototypes must be \[K, D\]"),
        ((emb.long(), y, protos), "floating point"),
        ((emb, torch.tensor([0, 1, 6, 2]), protos), r"class indices in \[0, 6\) \(got min 0, max 6\)"),
        ((emb, torch.tensor([0, -1, 5, 2]), protos), r"class indices in \[0, 6\) \(got min -1, max 5\)"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            loss(*args)
    for rng in [(2, 2), (-1, 3), (0, 5), (0,), (0.0, 2)]:
        with pytest.raises(ValueError, match="local_range must be"):
            loss(emb, y, protos, local_range=rng)
    r3 = BBLLoss(COUNTS6, variant="r3")
    r3(emb, y, protos)
    with pytest.raises(ValueError, match="embedding size changed"):
        r3(torch.randn(4, 2, 7), y, torch.randn(6, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["r1", "r2", "r3", "r4"])
def test_cpu_and_cuda_agree(variant):
    emb, y, protos = batch(16, 6, 8, seed=7, dtype=torch.float32)
    cpu, gpu = BBLLoss(COUNTS6, variant=variant), BBLLoss(COUNTS6, variant=variant).cuda()
    for _ in range(2):  # the second step uses the R3/R4 state written by the first
        a = cpu(emb, y, protos)
        b = gpu(emb.cuda(), y.cuda(), protos.cuda())
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v.cpu(), atol=1e-5, rtol=1e-5)
