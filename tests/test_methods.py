"""Methods (METHODS.md §1 invariants that involve a recipe) and the lr schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail import config as C
from longtail.data.batches import Batch
from longtail.engine.schedule import lr_at
from longtail.errors import ConfigError
from longtail.losses import class_balanced_weights
from longtail.methods import create_method, list_methods

COUNTS = np.array([500, 200, 80, 30, 10])


def cfg_for(method, **over):
    cfg = C.Config()
    C.apply_overrides(cfg, [f"method.name={method}", *[f"{k}={v}" for k, v in over.items()]])
    return cfg


def test_registry_has_the_baselines():
    assert {"ce", "focal", "cb", "ldam_drw", "la"} <= set(list_methods())
    with pytest.raises(ConfigError, match="did you mean 'ldam_drw'"):
        create_method(cfg_for("ldam_dr"), COUNTS)


@pytest.mark.parametrize("method,head", [("ce", "linear"), ("focal", "linear"), ("cb", "linear"),
                                         ("ldam_drw", "cosine"), ("la", "linear")])
def test_each_method_trains_a_step(method, head):
    torch.manual_seed(0)
    cfg = cfg_for(method, **{"model.head": head, "model.backbone": "resnet8"})
    m = create_method(cfg, COUNTS)
    net = m.build_network(5, 3)
    m.on_epoch_start(0)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 0, 1])
    batch = Batch(views=[x], labels=y, index=torch.arange(8))
    out = m.forward_batch(net, batch)
    loss, _ = m.loss(batch, out)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_drw_switches_exactly_at_epoch_160():
    m = create_method(cfg_for("ldam_drw", **{"model.head": "cosine"}), COUNTS)
    logits = torch.randn(16, 5) * 5
    y = torch.randint(0, 5, (16,))
    w = class_balanced_weights(COUNTS, 0.9999)
    m.on_epoch_start(159)
    assert m.criterion.weight is None
    before = m.criterion(logits, y)
    m.on_epoch_start(160)
    assert torch.allclose(m.criterion.weight, w)
    after = m.criterion(logits, y)
    assert not torch.isclose(before, after)
    m.on_epoch_start(159)  # resuming earlier in the schedule switches it back off
    assert m.criterion.weight is None


def test_ldam_needs_cosine_head():
    with pytest.raises(ConfigError, match="model.head=cosine"):
        create_method(cfg_for("ldam_drw"), COUNTS)


def test_la_inference_logits_are_raw():
    m = create_method(cfg_for("la"), COUNTS)
    from longtail.models import NetOutput

    logits = torch.randn(4, 5)
    out = NetOutput(features=torch.randn(4, 3), logits=logits, embeddings={})
    assert torch.equal(m.inference_logits(out), logits)  # the prior never enters inference


def test_empty_class_is_an_error():
    with pytest.raises(ConfigError, match="no training images"):
        create_method(cfg_for("ce"), np.array([5, 0, 3]))


def test_ldam_schedule():
    o = C.OptimConfig()  # the LDAM recipe: warm-up 5, x0.01 at 160 and 180
    lrs = [lr_at(e, 200, o) for e in range(200)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[5] == lrs[159] == pytest.approx(0.1)
    assert lrs[160] == lrs[179] == pytest.approx(1e-3)
    assert lrs[180] == lrs[199] == pytest.approx(1e-5)


def test_cosine_and_constant_schedule():
    o = C.OptimConfig(schedule="cosine", warmup_epochs=0, lr=1.0)
    assert lr_at(0, 10, o) == pytest.approx(1.0) and lr_at(5, 10, o) == pytest.approx(0.5)
    assert all(lr_at(e, 10, o) >= lr_at(e + 1, 10, o) for e in range(9))
    assert lr_at(7, 10, C.OptimConfig(schedule="constant", warmup_epochs=0, lr=0.3)) == 0.3
