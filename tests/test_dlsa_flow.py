"""DLSA building blocks: flow, mixture, flow-training losses, sampler, filtering, priors (METHODS §4.9)."""

import math

import numpy as np
import pytest
import torch

from longtail.stage2.dlsa.classifiers import ClusterAidedClassifier, bsm_offsets
from longtail.stage2.dlsa.config import DLSAConfig, load_dlsa_config
from longtail.stage2.dlsa.filtering import cluster_stats, gather_prior, llh_threshold, prior_table
from longtail.stage2.dlsa.flow import MADE, Flow
from longtail.stage2.dlsa.mixture import GMFlow, log_posterior, log_prob, score
from longtail.stage2.dlsa.train_flow import BalanceEMA, PairSampler, class_weights, purity_loss, train_flow
from longtail.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _eval_flow(d, seed=0):
    torch.manual_seed(seed)
    flow = Flow(d, generator=torch.Generator().manual_seed(seed)).double()
    flow.train()
    flow(torch.randn(64, d, dtype=torch.float64) * 2 + 1)  # non-trivial running statistics
    with torch.no_grad():
        for bn in (flow.layers[1], flow.layers[3]):
            bn.log_gamma.normal_(0, 0.3)
            bn.beta.normal_(0, 0.3)
    return flow.eval()


@pytest.mark.parametrize("d", [3, 5])
def test_flow_logdet_matches_autograd_jacobian(d):
    flow = _eval_flow(d)
    xs = torch.randn(4, d, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = flow(xs)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], xs[i])
        sign, ref = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(float(ref) - float(logdet[i])) < 1e-6


@pytest.mark.parametrize("reverse", [False, True])
def test_made_jacobian_is_triangular_in_its_order(reverse):
    d = 5
    made = MADE(d, reverse=reverse, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0][0], x)
    order = torch.arange(d).flip(0) if reverse else torch.arange(d)
    permuted = jac[order][:, order]  # rows/cols in the block's order
    assert torch.count_nonzero(torch.triu(permuted, diagonal=1)) == 0
    assert torch.all(torch.diagonal(permuted) != 0)
    # the first coordinate in the order gets bias-only m and log a: its row is a constant times e_j
    assert torch.count_nonzero(permuted[0, 1:]) == 0
    # the lower triangle is actually used (the mask is not trivially diagonal)
    assert torch.count_nonzero(torch.tril(permuted, diagonal=-1)) > 0


def test_inverse_then_forward_is_identity():
    flow = _eval_flow(4, seed=3)
    u = torch.randn(16, 4, dtype=torch.float64)
    x = flow.inverse(u)
    assert torch.allclose(flow(x)[0], u, atol=1e-9)
    x2 = torch.randn(16, 4, dtype=torch.float64)
    assert torch.allclose(flow.inverse(flow(x2)[0]), x2, atol=1e-9)


def _grid_integral(model: GMFlow) -> float:
    lim, n = 12.0, 601
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    model.eval()
    with torch.no_grad():
        dens = log_prob(model(pts)).exp().reshape(n, n)
    return float(torch.trapezoid(torch.trapezoid(dens, g, dim=1), g))


def test_density_integrates_to_one_untrained_and_trained():
    gen = torch.Generator().manual_seed(0)
    model = GMFlow(2, num_clusters=4, centre_std=0.05, generator=gen).double()
    model.train()
    model(torch.randn(256, 2, dtype=torch.float64))  # running stats from one batch
    assert abs(_grid_integral(model) - 1) < 1e-3
    # briefly trained on two blobs
    torch.manual_seed(0)
    feats = torch.cat([torch.randn(100, 2) * 0.7 + 2, torch.randn(100, 2) * 0.7 - 2])
    labels = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    cfg = DLSAConfig(num_clusters=4, flow_epochs=3, flow_batch=50, flow_lr=0.05)
    trained, _ = train_flow(feats, labels, 2, cfg, torch.device("cpu"), seed=0)
    assert abs(_grid_integral(trained.double()) - 1) < 1e-3


def test_mixture_log_prob_and_posterior_match_direct_computation():
    gen = torch.Generator().manual_seed(0)
    model = GMFlow(3, num_clusters=6, generator=gen).double().eval()
    x = torch.randn(10, 3, dtype=torch.float64)
    with torch.no_grad():
        lpk = model(x)
        u, logdet = model.flow(x)
    for i in range(10):
        for k in range(6):
            diff = u[i] - model.mixture.means[k]
            ref = -1.5 * math.log(2 * math.pi) - 0.5 * float(diff @ diff) + float(logdet[i])
            assert abs(float(lpk[i, k]) - ref) < 1e-9
        direct = math.log(sum(math.exp(float(v)) for v in lpk[i]) / 6)
        assert abs(float(log_prob(lpk)[i]) - direct) < 1e-9
    assert torch.allclose(log_posterior(lpk).exp().sum(1), torch.ones(10, dtype=torch.float64))
    # the chunked scorer agrees with the one-shot computation
    ll, cl = score(model.float(), x.float(), chunk_size=3)
    assert torch.allclose(ll, log_prob(lpk).float(), atol=1e-4)
    assert torch.equal(cl.long(), lpk.argmax(1))
    assert cl.dtype == torch.int32


def test_mixture_means_are_a_seeded_buffer():
    a = GMFlow(4, 7, generator=torch.Generator().manual_seed(5))
    b = GMFlow(4, 7, generator=torch.Generator().manual_seed(5))
    assert "mixture.means" not in dict(a.named_parameters())
    assert "mixture.means" in a.state_dict()
    assert torch.equal(a.mixture.means, b.mixture.means)
    assert abs(float(a.mixture.means.std()) - 0.05) < 0.03


def test_balance_term_nonnegative_zero_at_uniform_and_pbar_normalised():
    torch.manual_seed(0)
    bal = BalanceEMA(0.7)
    for _ in range(6):
        q = torch.softmax(torch.randn(32, 8) * 3, 1)
        loss, pbar = bal(q)
        assert float(loss) >= -1e-9
        assert abs(float(pbar.sum()) - 1) < 8 * 1e-7 + 1e-6
    # reference EMA by hand
    ref, qs = BalanceEMA(0.7), [torch.softmax(torch.randn(4, 3), 1) for _ in range(3)]
    e = torch.zeros(3)
    for t, q in enumerate(qs, 1):
        e = 0.7 * e + 0.3 * (q.mean(0) + 1e-7)
        _, pbar = ref(q)
        assert torch.allclose(pbar, e / (1 - 0.7 ** t))
    loss, _ = BalanceEMA(0.7)(torch.full((5, 4), 0.25))
    assert abs(float(loss)) < 1e-6


def test_purity_gradient_flows_only_through_negatives():
    lp = torch.randn(6, 5, requires_grad=True)
    ln = torch.randn(6, 5, requires_grad=True)
    loss = purity_loss(torch.log_softmax(lp, 1), torch.log_softmax(ln, 1))
    loss.backward()
    assert lp.grad is None or torch.count_nonzero(lp.grad) == 0
    assert torch.count_nonzero(ln.grad) > 0
    qp = torch.softmax(lp, 1).detach()
    ref = (qp * torch.log_softmax(ln, 1)).sum(1).mean()
    assert torch.allclose(loss, ref)


def test_pair_sampler_distinct_classes_and_uniform():
    labels = torch.tensor([0] * 500 + [1] * 50 + [2] * 5 + [3] * 2 + [5] * 30)  # class 4 absent
    s = PairSampler(labels, torch.Generator().manual_seed(0))
    pos, neg, _ = s.sample(20000)
    a, b = labels[pos], labels[neg]
    assert bool((a != b).all())
    assert not bool((a == 4).any() or (b == 4).any())
    freq = torch.bincount(a, minlength=6)[[0, 1, 2, 3, 5]].numpy()
    expected = np.full(5, 20000 / 5)
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # 0.999 quantile of chi-square with 4 degrees of freedom
    # the same seed gives the same pairs
    again = PairSampler(labels, torch.Generator().manual_seed(0)).sample(20000)
    assert torch.equal(again[0], pos) and torch.equal(again[1], neg)
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairSampler(torch.zeros(5, dtype=torch.long), torch.Generator())


def test_class_weights_formula():
    labels = torch.tensor([0] * 8 + [1] * 4 + [3] * 2)
    w = class_weights(labels, 4, q=2.0)
    raw = torch.tensor([1.0, 4.0, 0.0, 16.0])
    assert torch.allclose(w, raw / raw.sum())


@pytest.mark.parametrize("n,rho", [(10, 0.3), (101, 0.3), (7, 0.5), (50, 0.01), (33, 0.99)])
def test_threshold_keeps_the_expected_count(n, rho):
    ll = torch.randperm(n).float() * 0.37 - 5
    thr = llh_threshold(ll, rho)
    assert int((ll >= thr).sum()) == n - math.floor((1 - rho) * n)


def test_threshold_extremes():
    ll = torch.randn(20)
    assert int((ll >= llh_threshold(ll, 0.0)).sum()) == 0
    assert int((ll >= llh_threshold(ll, 1.0)).sum()) == 20
    assert int((torch.randn(5) * 100 >= llh_threshold(ll, 1.0)).sum()) == 5  # val/test too
    with pytest.raises(ValueError, match=r"rho must lie in \[0, 1\]"):
        llh_threshold(ll, 1.5)


def test_prior_table_rows_and_gather_match_dense_reference():
    torch.manual_seed(0)
    K, C, N = 6, 4, 40
    cluster = torch.randint(0, K - 1, (N,), dtype=torch.int32)  # cluster K-1 stays empty
    labels = torch.randint(0, C, (N,))
    table = prior_table(cluster, labels, K, C)
    sums = table.sum(1)
    sizes = torch.bincount(cluster.long(), minlength=K)
    assert torch.allclose(sums[sizes > 0], torch.ones(int((sizes > 0).sum())))
    assert torch.all(sums[sizes == 0] == 0)
    dense = torch.zeros(N, C)
    for i in range(N):
        members = cluster == cluster[i]
        for c in range(C):
            dense[i, c] = float((labels[members] == c).sum()) / float(members.sum())
    assert torch.allclose(gather_prior(table, cluster), dense, atol=1e-6)


def test_cluster_stats_against_loop():
    cluster = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3])
    labels = torch.tensor([2, 2, 1, 0, 1, 4, 4, 4, 4])
    st = cluster_stats(cluster, labels, 5, 5, purity_threshold=0.6, min_size=2)
    assert st["good"] == 2 and st["max_size"] == 4 and st["non_empty"] == 3
    assert abs(st["mean_purity"] - (2 / 3 + 1 / 2 + 1) / 3) < 1e-9


def test_cac_is_one_affine_map():
    d, C = 6, 4
    cac = ClusterAidedClassifier(d, C, generator=torch.Generator().manual_seed(0))
    x, p = torch.randn(5, d), torch.softmax(torch.randn(5, C), 1)
    W = torch.cat([cac.lin_x.weight + cac.lin_zp.weight[:, :d], cac.lin_zp.weight[:, d:]], 1)
    b = cac.lin_x.bias + cac.lin_zp.bias
    assert torch.allclose(cac(x, x, p), torch.cat([x, p], 1) @ W.T + b, atol=1e-6)


def test_bsm_offsets():
    assert torch.allclose(bsm_offsets(torch.tensor([0, 1, 100])),
                          torch.tensor([math.log(1e-6), math.log(1 + 1e-6), math.log(100 + 1e-6)]))


def test_config_validation_and_loading(tmp_path):
    cfg = load_dlsa_config(None, ["num_clusters=50", "prior_source=active"])
    assert cfg.num_clusters == 50 and cfg.prior_source == "active"
    with pytest.raises(ConfigError, match="num_clusters"):
        load_dlsa_config(None, ["num_cluster=5"])
    with pytest.raises(ConfigError, match="z_input must be one of feature, latent"):
        load_dlsa_config(None, ["z_input=flow"])
    with pytest.raises(ConfigError, match=r"llh_proportion must lie in \[0, 1\]"):
        load_dlsa_config(None, ["llh_proportion=1.2"])


@pytest.mark.parametrize("name", ["imagenet_lt_paco", "inat_paco", "places_lt", "cifar_small"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "dlsa" / f"{name}.yaml"
    cfg = load_dlsa_config(path)
    assert cfg.llh_proportion == 0.3 and cfg.centre_std == 0.05
    assert (cfg.max_depth, cfg.num_clusters) == {"imagenet_lt_paco": (3, 500), "inat_paco": (3, 500),
                                                 "places_lt": (1, 500), "cifar_small": (3, 50)}[name]
