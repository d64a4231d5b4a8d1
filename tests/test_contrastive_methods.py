"""The contrastive recipes (bcl, supcon, bbl): views, one backbone pass, loss wiring, training, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail import config as C
from longtail.data.batches import Batch
from longtail.engine.run import train
from longtail.methods import create_method
from longtail.models.contrastive import ContrastiveNetwork

from test_train import assert_same_weights, quiet, tiny_cfg

COUNTS = np.array([50, 20, 8, 3])


def method_cfg(name, **over):
    cfg = C.Config()
    ov = {"method.name": name, "model.backbone": "resnet8", "model.width": "8", "model.head": "cosine",
          "method.proj_hidden": "16", "method.proj_dim": "8", "data.augment": "autoaugment"}
    ov.update({k: str(v) for k, v in over.items()})
    C.apply_overrides(cfg, [f"{k}={v}" for k, v in ov.items()])
    return C.validate(cfg)


def batch(b=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, size, size, generator=g) for _ in range(3)]
    return Batch(views=views, labels=torch.tensor([0, 0, 1, 2, 0, 1])[:b], index=torch.arange(b))


@pytest.mark.parametrize("cl,expected", [("sim-sim", ["simclr", "simclr"]), ("sim-rand", ["simclr", "simclr_rand"]),
                                         ("rand-rand", ["simclr_rand", "simclr_rand"])])
def test_views(cl, expected):
    m = create_method(method_cfg("bcl", **{"method.cl_views": cl}), COUNTS)
    assert m.num_views == 3 and m.view_presets() == ["autoaugment", *expected]


@pytest.mark.parametrize("name", ["bcl", "bbl", "supcon"])
def test_forward_batch_and_loss(name):
    torch.manual_seed(0)
    m = create_method(method_cfg(name), COUNTS)
    net = m.build_network(4, 3)
    assert isinstance(net, ContrastiveNetwork) and (net.proto is None) == (name == "supcon")
    b = batch()
    out = m.forward_batch(net, b)
    assert out.logits.shape == (6, 4) and out.features.shape[0] == 6
    z = out.embeddings["z"]
    assert z.shape == (6, 2, 8) and torch.allclose(z.norm(dim=-1), torch.ones(6, 2), atol=1e-5)
    if name != "supcon":
        assert out.embeddings["prototypes"].shape == (4, 8)
    loss, parts = m.loss(b, out)
    assert torch.isfinite(loss) and {"la", "contrastive"} <= set(parts)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_one_backbone_pass_over_all_views(monkeypatch):
    m = create_method(method_cfg("bcl"), COUNTS)
    net = m.build_network(4, 3)
    sizes = []
    net.backbone.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    m.forward_batch(net, batch())
    assert sizes == [18]  # 3 views x 6 images, one pass: BatchNorm statistics cover all views


def test_contrastive_term_alone_trains_the_classifier_through_prototypes():
    torch.manual_seed(0)
    m = create_method(method_cfg("bcl", **{"method.alpha": 0}), COUNTS)
    net = m.build_network(4, 3)
    b = batch()
    loss, _ = m.loss(b, m.forward_batch(net, b))
    loss.backward()
    assert net.classifier.weight.grad.abs().sum() > 0  # only reachable through the prototypes (alpha = 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.proto.parameters())


def test_inference_uses_raw_classifier_logits():
    m = create_method(method_cfg("bcl"), COUNTS)
    net = m.build_network(4, 3).eval()
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    assert torch.equal(m.inference_logits(out), out.logits)


@pytest.mark.parametrize("name,over", [("bcl", {}), ("supcon", {}), ("bbl", {}),
                                       ("bbl", {"method.bbl_variant": "r2"}),
                                       ("bcl", {"method.cl_views": "sim-rand"})])
def test_trains_on_digits(tmp_path, name, over):
    cfg = tiny_cfg(**{"method.name": name, "model.head": "cosine", "method.proj_hidden": 16, "method.proj_dim": 8,
                      "data.augment": "autoaugment", "train.max_steps": 10, **over})
    out = train(cfg, out=str(tmp_path / "r"), echo=quiet)
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 10 and s["method"] == name
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])  # epoch 1 (8 steps)
    assert line["loss_contrastive"] > 0 and line["loss_la"] > 0


@pytest.mark.parametrize("variant", ["r1", "r3", "r4"])
def test_bbl_resume_is_bit_exact(tmp_path, variant):
    """Stateful BBL variants (epoch memory, queue) resume exactly: their state is in the checkpoint."""
    over = {"method.name": "bbl", "model.head": "cosine", "method.proj_hidden": 16, "method.proj_dim": 8,
            "method.bbl_variant": variant, "method.bbl_queue_size": 40, "data.augment": "standard"}
    ref = train(tiny_cfg(**over), out=str(tmp_path / "ref"), echo=quiet)
    part = train(tiny_cfg(**{**over, "train.epochs": 1}), out=str(tmp_path / "part"), echo=quiet)
    train(C.load(part / "config.yaml", ["train.epochs=2"]), resume=str(part), echo=quiet)
    assert_same_weights(ref, part)


def test_bbl_r3_resume_mid_epoch_is_bit_exact(tmp_path):
    """Resuming inside an epoch must not roll BBL's epoch memory over a second time."""
    over = {"method.name": "bbl", "model.head": "cosine", "method.proj_hidden": 16, "method.proj_dim": 8,
            "method.bbl_variant": "r3", "data.augment": "standard", "train.epochs": 3}
    ref = train(tiny_cfg(**over), out=str(tmp_path / "ref"), echo=quiet)
    part = train(tiny_cfg(**{**over, "train.max_steps": 12}), out=str(tmp_path / "part"), echo=quiet)  # epoch 2
    train(C.load(part / "config.yaml", ["train.max_steps=null"]), resume=str(part), echo=quiet)
    assert_same_weights(ref, part)
