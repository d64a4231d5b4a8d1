"""train.compile: the training step (forward, loss, statistics) is one graph per batch shape.

Static shapes (``dynamic=False``) give one graph per distinct shape: the full batch, the last partial
batch (none with ``train.drop_last=true``), and evaluation's full and last batches; nothing else may
recompile or break the graph over a whole epoch with evaluation, for any method. The compiled step must
give the eager loss and gradients.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch._dynamo import register_backend

from longtail import config as C
from longtail.engine import run as R
from longtail.engine.logging import NullLogger
from longtail.engine.trainer import EpochSums, Trainer, compile_fn
from longtail.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GRAPHS: list[int] = []


@register_backend
def longtail_counting(gm, example_inputs):
    """aot_eager (dynamo + AOTAutograd, no code generation) that records every graph it is given."""
    from torch._dynamo.backends.registry import lookup_backend

    GRAPHS.append(len(gm.graph.nodes))
    return lookup_backend("aot_eager")(gm, example_inputs)


def _setup(method: str, extra: list[str]):
    method, _, variant = method.partition(":")
    over = [f"method.bbl_variant={variant}"] if variant else []
    cfg = C.load(ROOT / "configs" / "cifar10_lt" / f"{method}.yaml", over + [
        "data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8", "train.batch_size=64",
        "train.epochs=1", "train.progress=false", "device=cpu", "train.eval_every=0", "eval.batch_size=200",
        "optim.warmup_epochs=0", "train.compile=true"] + extra)
    torch.manual_seed(0)
    return cfg, R.build_pieces(cfg, torch.device("cpu"))


def _trainer(cfg, p, forward=None) -> Trainer:
    tr = Trainer(cfg, Path("/nonexistent"), network=p.network, method=p.method, train_batches=p.train_batches,
                 eval_batches=p.eval_batches, train_counts=p.dataset.train_counts,
                 num_classes=p.dataset.num_classes, device=torch.device("cpu"), logger=NullLogger(), forward=forward)
    tr.save = lambda: None
    return tr


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("method", ["ce", "ldam_drw", "bcl", "bbl:r4"])
def test_an_epoch_with_evaluation_compiles_one_graph_per_shape(method, drop_last):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    GRAPHS.clear()
    cfg, p = _setup(method, ["train.compile_backend=longtail_counting", f"train.drop_last={drop_last}"])
    train_shapes = {len(b.labels) for b in p.train_batches.epoch(0)}
    assert len(train_shapes) == (1 if drop_last else 2)  # 8-step epochs: the digits set has a partial tail
    tr = _trainer(cfg, p, forward=compile_fn(p.network, cfg.train))
    m = tr.fit()
    eval_shapes = {len(b.labels) for b in p.eval_batches}
    assert len(eval_shapes) == 2 and m["num_samples"] == 500
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    assert len(GRAPHS) == len(train_shapes) + len(eval_shapes), GRAPHS


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "bcl"])
def test_the_compiled_step_gives_the_eager_loss_and_gradients(method):
    """Inductor (the default backend) against eager on the same weights and the same batch."""
    torch._dynamo.reset()
    cfg, p = _setup(method, ["train.drop_last=true"])
    batch = next(iter(p.train_batches.epoch(0)))
    results = []
    for compiled in (False, True):
        c = copy.deepcopy(cfg)
        c.train.compile = compiled
        net, method_obj = copy.deepcopy(p.network), copy.deepcopy(p.method)
        p2 = R.Pieces(p.dataset, method_obj, net, p.train_batches, p.eval_batches)
        tr = _trainer(c, p2)
        method_obj.on_epoch_start(0)
        net.train()
        loss, parts, correct = tr._forward_loss(batch.views, batch.labels, batch.index)
        loss.backward()
        results.append((loss.detach(), {k: v.detach() for k, v in parts.items()}, correct,
                        {n: q.grad.clone() for n, q in net.named_parameters() if q.grad is not None}))
    (l0, p0, c0, g0), (l1, p1, c1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    assert set(p1) == set(p0) and all(torch.allclose(p1[k], p0[k], rtol=1e-4, atol=1e-5) for k in p0)
    assert int(c1) == int(c0)
    assert set(g1) == set(g0) and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-3, atol=1e-5, msg=name)


def test_bad_compile_settings_are_clear_errors():
    cfg = C.Config()
    with pytest.raises(ConfigError, match="train.compile_mode"):
        C.apply_overrides(cfg, ["train.compile_mode=fastest"])
        C.validate(cfg)
    cfg = C.Config()
    C.apply_overrides(cfg, ["train.compile_backend=no_such_backend"])
    with pytest.raises(ConfigError, match="not a torch.compile backend"):
        compile_fn(lambda x: x, cfg.train)


def test_drop_last_gives_every_step_the_same_shapes():
    cfg, p = _setup("ce", ["train.drop_last=true", "train.compile=false"])
    sizes = [len(b.labels) for b in p.train_batches.epoch(0)]
    assert set(sizes) == {64} and len(sizes) == len(p.dataset.train) // 64
    tr = _trainer(cfg, p)
    tr.fit()
    assert tr.progress.global_step == len(sizes)


def test_epoch_sums_record_and_total_without_reading_the_device():
    sums = EpochSums(torch.device("cpu"))
    for step, (loss, correct, images) in enumerate([(2.0, 3, 8), (1.0, 5, 8), (4.0, 1, 2)]):
        sums.record(step, torch.tensor(loss), torch.tensor(correct), {"a": torch.tensor(loss / 2)}, images)
    loss_sum, correct, seen, part = sums.totals().tolist()
    assert (loss_sum, correct, seen, part) == (2 * 8 + 1 * 8 + 4 * 2, 9, 18, (2 * 8 + 1 * 8 + 4 * 2) / 2)
    assert int(sums.first_bad()) == -1 and sums.names == ("a",)
    sums.record(300, torch.tensor(float("nan")), torch.tensor(0), {"a": torch.tensor(0.0)}, 1)  # grows
    assert int(sums.first_bad()) == 300
    with pytest.raises(ValueError, match="parts"):
        sums.record(4, torch.tensor(1.0), torch.tensor(1), {"b": torch.tensor(0.0)}, 1)


def test_a_schedule_switch_recompiles_once_per_shape():
    """LDAM-DRW switches its class weights on at ``drw_epoch``: the loss graph changes once (per shape)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    GRAPHS.clear()
    cfg, p = _setup("ldam_drw", ["train.compile_backend=longtail_counting", "train.epochs=3", "method.drw_epoch=1"])
    _trainer(cfg, p, forward=compile_fn(p.network, cfg.train)).fit()
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    assert len(GRAPHS) == 2 * 2 + 2, GRAPHS  # (before, after the switch) x (full, last) + evaluation's two
