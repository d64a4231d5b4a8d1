"""Several seeds in one run (train.seeds): the stacked network, its exact split, and stacked training that
gives each seed what a single-seed run with that seed gives.

Tolerances. In float64 (the networks converted with ``.double()`` by a fixture) a stacked run equals the
single-seed runs to a few ulps (measured: at most 7e-16 in any weight after 2 steps of every method; the
cosine head's batched matmul and the grouped convolution sum in another order than ``F.linear`` and the
plain convolution), so those tests use 1e-12. In float32 (the production dtype) the same reordering gives
1e-7 per step, but training a few steps can amplify it far beyond (ReLU kinks on the constant background
of the digits images flip whole regions at once: a 1.5e-7 weight difference changed one gradient by 0.04 in
an LDAM run, identically for a plain network given the stacked network's weights), so float32 runs are
compared after a single step (5e-6) and for exact resume (bit-exact: the same kernels on both sides).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from longtail import config as C
from longtail.cli import main
from longtail.engine import stacked as S
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.run import evaluate_run, train
from longtail.engine.trainer import EpochSums, build_optimizer
from longtail.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLossError, OutputExistsError
from longtail.methods.base import Method
from longtail.methods.contrastive import TwoBranch
from longtail.models import backbones as backbones_module
from longtail.models.contrastive import build_contrastive_network
from longtail.models.heads import LinearHead
from longtail.models.network import Network, build_network
from longtail.models.stacked import (StackedNetwork, check_stackable, split_state_dict, stack_inputs,
                                     stack_networks)

METHODS = {
    "ce": {},
    "la": {},
    "ldam_drw": {"model.head": "cosine", "method.drw_epoch": 0},
    "bcl": {"model.head": "cosine", "method.proj_hidden": 16, "method.proj_dim": 8},
    "bbl": {"model.head": "cosine", "method.proj_hidden": 16, "method.proj_dim": 8, "method.bbl_variant": "r4",
            "method.bbl_queue_size": 32},
    "proco": {"method.proj_hidden": 16, "method.proj_dim": 32},
    "cb": {"method.label_smoothing": 0.1},
}
# the optimiser's updates are elementwise, so AdamW and the restart schedule stack like SGD
ADAMW = {"optim.name": "adamw", "optim.lr": 0.01, "optim.weight_decay": 0.05, "optim.schedule": "cosine_restarts",
         "optim.restart_period": 1, "train.epochs": 2}


def quiet(*a):
    pass


def tiny_cfg(**over) -> C.Config:
    """Digits, ResNet-8 of width 4, batches of 128 (4 steps an epoch)."""
    cfg = C.Config()
    ov = {"data.name": "digits", "data.imbalance": "10", "model.backbone": "resnet8", "model.width": "4",
          "method.name": "ce", "optim.lr": "0.05", "optim.warmup_epochs": "0", "optim.schedule": "constant",
          "train.epochs": "1", "train.batch_size": "128", "train.eval_every": "1", "train.progress": "false",
          "eval.batch_size": "512", "device": "cpu"}
    ov.update({k: str(v) for k, v in over.items()})
    C.apply_overrides(cfg, [f"{k}={v}" for k, v in ov.items()])
    return C.validate(cfg)


@pytest.fixture
def float64(monkeypatch):
    """Every network a method builds is float64 (inputs are cast by the networks' forward)."""
    from longtail.methods.proco import ProCo

    for cls in (Method, TwoBranch, ProCo):
        orig = cls.build_network
        monkeypatch.setattr(cls, "build_network", lambda self, *a, _o=orig: _o(self, *a).double())
    for cls in (Network, StackedNetwork):
        orig = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, x, _o=orig: _o(self, x.double()))


@pytest.fixture
def step_losses(monkeypatch):
    """Every recorded step loss: single runs append a scalar, stacked runs a vector (one per seed)."""
    seen = []
    for cls in (EpochSums, S.StackedEpochSums):
        orig = cls.record

        def record(self, step, loss, *a, _o=orig, **k):
            seen.append(loss.detach().double().clone())
            return _o(self, step, loss, *a, **k)

        monkeypatch.setattr(cls, "record", record)
    return seen


def weights(run_dir: Path) -> dict:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------------------
# the stacked network


def _nets(n, mc, contrastive=False, seed0=10):
    nets = []
    for s in range(n):
        torch.manual_seed(seed0 + s)
        net = (build_contrastive_network(mc, 5, 3, proj_hidden=7, proj_dim=6, prototypes=True) if contrastive
               else build_network(mc, 5, 3))
        nets.append(net.double())
    return nets


@pytest.mark.parametrize("head,contrastive", [("linear", False), ("cosine", False), ("cosine", True)])
def test_stacked_forward_and_gradients_are_each_models_own(head, contrastive):
    mc = C.ModelConfig(backbone="resnet8", width=4, head=head)
    nets = _nets(3, mc, contrastive)
    st = stack_networks(nets)
    xs = [torch.randn(4, 3, 12, 12, dtype=torch.float64) for _ in range(3)]
    out = st(stack_inputs(xs))
    assert out.logits.shape == (3, 4, 5) and out.features.shape == (3, 4, 16)
    # each model's loss: a function of its own output only; the sum gives each model its own gradient
    total = 0
    for i, net in enumerate(nets):
        ref = net(xs[i])
        got = out.model(i)
        torch.testing.assert_close(got.logits, ref.logits, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.features, ref.features, rtol=0, atol=1e-12)
        for k in ref.embeddings:
            torch.testing.assert_close(got.embeddings[k], ref.embeddings[k], rtol=0, atol=1e-12)
        w = torch.arange(5, dtype=torch.float64) * (i + 1)
        own = (ref.logits * w).sin().sum() + sum(v.square().sum() for v in ref.embeddings.values())
        own.backward()
        total = total + (got.logits * w).sin().sum() + sum(v.square().sum() for v in got.embeddings.values())
    total.backward()
    shapes = st.shapes
    for name, p in st.named_parameters():
        for i, net in enumerate(nets):
            ref = dict(net.named_parameters())[name].grad
            torch.testing.assert_close(p.grad.reshape(3, *shapes[name])[i], ref, rtol=0, atol=1e-10,
                                       msg=lambda m: f"{name} of model {i}: {m}")
    # the running statistics moved per model
    for i, sd in enumerate(st.split_state_dict()):
        ref = nets[i].state_dict()
        for k in ref:
            torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=1e-12)


def test_split_and_stack_are_exact_inverses():
    mc = C.ModelConfig(backbone="resnet8", width=4, head="cosine")
    nets = _nets(3, mc, contrastive=True)
    st = stack_networks(nets)
    parts = st.split_state_dict()
    for i, net in enumerate(nets):
        ref = net.state_dict()
        assert parts[i].keys() == ref.keys()
        assert all(torch.equal(parts[i][k], ref[k]) for k in ref)
    other = stack_networks(_nets(3, mc, contrastive=True, seed0=50))
    other.load_state_dicts(parts)
    assert all(torch.equal(a, b) for a, b in zip(st.state_dict().values(), other.state_dict().values()))
    assert split_state_dict(st.state_dict(), st.shapes, 3)[2].keys() == parts[2].keys()


def test_torchvision_resnet_and_resnext_stack(monkeypatch):
    import torchvision.models.resnet as tv

    def tiny(groups):
        m = tv.ResNet(tv.Bottleneck, [1, 1, 1, 1], groups=groups, width_per_group=4)
        m.fc, m.out_dim = nn.Identity(), 2048
        return m

    for groups in (1, 2):  # ResNet and ResNeXt layouts (grouped convolutions become N * groups)
        nets = []
        for s in range(2):
            torch.manual_seed(s)
            nets.append(Network(tiny(groups), LinearHead(2048, 3)).double())
        st = stack_networks(nets, "tiny")
        xs = [torch.randn(2, 3, 16, 16, dtype=torch.float64) for _ in range(2)]
        out = st(stack_inputs(xs))
        for i in range(2):
            torch.testing.assert_close(out.model(i).logits, nets[i](xs[i]).logits, rtol=0, atol=1e-10)
    check_stackable(backbones_module.create_backbone("resnet18"), "resnet18")


def test_backbones_and_heads_without_a_stacked_form_are_refused():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.out_dim = 4

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    with pytest.raises(ConfigError, match=r"backbone mixer cannot be stacked: backbone \(Mixer\) has no stacked form"):
        stack_networks([Network(Mixer(), LinearHead(4, 3)) for _ in range(2)], "mixer")

    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.1))
    with pytest.raises(ConfigError, match=r"backbone\.1 \(Dropout\) has no stacked form"):
        check_stackable(bad, "x")
    head = nn.Module()
    head.weight = nn.Parameter(torch.zeros(3, 4))
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.out_dim = 4
    net = Network(backbone, LinearHead(4, 3))
    net.classifier = head
    with pytest.raises(ConfigError, match="classifier head Module cannot be stacked"):
        stack_networks([net, net])


def test_per_model_gradient_clipping_matches_clipping_each_model():
    mc = C.ModelConfig(backbone="resnet8", width=4, head="linear")
    nets = _nets(3, mc)
    st = stack_networks(nets)
    xs = [torch.randn(4, 3, 12, 12, dtype=torch.float64) for _ in range(3)]
    scale = [1.0, 100.0, 0.001]  # model 0 clipped, model 1 clipped hard, model 2 untouched
    out = st(stack_inputs(xs))
    sum(out.model(i).logits.square().sum() * scale[i] for i in range(3)).backward()
    norms = S.clip_grad_norm_per_model_(st.parameters(), 3, 0.5)
    for i, net in enumerate(nets):
        (net(xs[i]).logits.square().sum() * scale[i]).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        torch.testing.assert_close(norms[i], ref_norm, rtol=1e-12, atol=0)
        for name, p in net.named_parameters():
            got = dict(st.named_parameters())[name].grad.reshape(3, *p.shape)[i]
            torch.testing.assert_close(got, p.grad, rtol=1e-10, atol=1e-14)
    assert norms[2] < 0.5 < norms[0]


def test_optimizer_state_splits_into_each_seeds_own():
    mc = C.ModelConfig(backbone="resnet8", width=4, head="linear")
    cfg = tiny_cfg()
    nets = _nets(2, mc)
    st = stack_networks(nets)
    opt = build_optimizer(st, cfg)
    refs = [build_optimizer(n, cfg) for n in nets]
    xs = [torch.randn(4, 3, 12, 12, dtype=torch.float64) for _ in range(2)]
    for _ in range(2):
        out = st(stack_inputs(xs))
        opt.zero_grad()
        sum(out.model(i).logits.sin().sum() for i in range(2)).backward()
        opt.step()
        for i, (n, o) in enumerate(zip(nets, refs)):
            o.zero_grad()
            n(xs[i]).logits.sin().sum().backward()
            o.step()
    parts = S._split_optimizer(opt.state_dict(), st)
    for part, ref in zip(parts, refs):
        r = ref.state_dict()
        assert part["param_groups"] == r["param_groups"] and part["state"].keys() == r["state"].keys()
        for idx in r["state"]:
            torch.testing.assert_close(part["state"][idx]["momentum_buffer"], r["state"][idx]["momentum_buffer"],
                                       rtol=0, atol=1e-10)
    back = S._stack_optimizer(parts, st)
    for idx, entry in opt.state_dict()["state"].items():
        assert torch.equal(back["state"][idx]["momentum_buffer"], entry["momentum_buffer"])


def test_epoch_sums_find_the_first_bad_step_and_seed():
    sums = S.StackedEpochSums(torch.device("cpu"), 3)
    ok = torch.ones(3)
    sums.record(0, ok, ok, {}, 4)
    assert int(sums.first_bad()) == -1
    sums.record(1, torch.tensor([1.0, 1.0, float("nan")]), ok, {}, 4)
    sums.record(2, torch.tensor([float("inf"), 1.0, 1.0]), ok, {}, 2)
    assert int(sums.first_bad()) == 1 * 3 + 2
    totals = sums.totals()
    assert totals.shape == (3, 3) and totals[1].tolist() == [10.0, 3.0, 10.0]


# ------------------------------------------------------------------------------------------------
# stacked training equals the single-seed runs


CLIP_CL = {"optim.grad_clip": 0.05, "train.channels_last": "true"}  # clipping active at every step


@pytest.mark.parametrize("method,extra", [(m, {}) for m in METHODS] + [("ce", CLIP_CL), ("bcl", CLIP_CL),
                                                                       ("ce", ADAMW)],
                         ids=list(METHODS) + ["ce-clip-channels_last", "bcl-clip-channels_last", "ce-adamw-restarts"])
def test_stacked_run_equals_each_single_seed_run(method, extra, float64, step_losses, tmp_path):
    over = {"method.name": method, "train.max_steps": 2, **METHODS[method], **extra}
    dirs = train(tiny_cfg(**over, **{"train.seeds": "[0,3,7]"}), out=str(tmp_path / "stacked"), echo=quiet)
    stacked_losses = torch.stack(step_losses)  # [steps, 3]
    assert [d.name for d in dirs] == [f"digits_r10_{method}_s{s}" for s in (0, 3, 7)]
    del step_losses[:]
    for i, (seed, d) in enumerate(zip((0, 3, 7), dirs)):
        ref = train(tiny_cfg(**over, **{"train.seed": seed}), out=str(tmp_path / f"single{seed}"), echo=quiet)
        single_losses = torch.stack(step_losses)
        del step_losses[:]
        assert single_losses.shape == (2,)
        torch.testing.assert_close(stacked_losses[:, i], single_losses, rtol=1e-12, atol=0)
        assert max_diff(weights(d), weights(ref)) < 1e-12
        a, b = load_checkpoint(d / "checkpoints" / "last.pt"), load_checkpoint(ref / "checkpoints" / "last.pt")
        for idx, entry in b["optimizer"]["state"].items():
            for name, v in entry.items():  # SGD's momentum buffers, AdamW's moments and step counts
                torch.testing.assert_close(a["optimizer"]["state"][idx][name], v, rtol=0, atol=1e-12)
        for k, v in b["method"].items():  # BBL's queue and its pointers
            torch.testing.assert_close(a["method"][k], v, rtol=0, atol=1e-12)
        sa, sb = json.loads((d / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
        assert sa["top1"] == sb["top1"] and sa["per_class"] == sb["per_class"] and sa["seed"] == seed
        assert C.load(d / "config.yaml") == C.load(ref / "config.yaml")  # an ordinary run of that seed


def test_float32_one_step_matches_and_seed_dirs_are_ordinary_runs(step_losses, tmp_path):
    over = {"train.max_steps": 1}
    dirs = train(tiny_cfg(**over, **{"train.seeds": "[1,2]"}), out=str(tmp_path), echo=quiet)
    stacked = step_losses[0]
    del step_losses[:]
    ref = train(tiny_cfg(**over, **{"train.seed": 2}), out=str(tmp_path / "single"), echo=quiet)
    torch.testing.assert_close(stacked[1], step_losses[0].reshape(()), rtol=1e-6, atol=0)
    assert max_diff(weights(dirs[1]), weights(ref)) < 5e-6
    m = evaluate_run(dirs[0], [], echo=quiet)  # eval reads a seed's directory unchanged
    assert m["agrees_with_summary"]


@pytest.mark.parametrize("method", ["ce", "bbl"])
def test_resume_after_a_signal_is_exact(method, monkeypatch, tmp_path):
    over = {"method.name": method, **METHODS[method]}
    cfg = tiny_cfg(**over, **{"train.seeds": "[0,1]"})
    full = train(cfg, out=str(tmp_path / "full"), echo=quiet)
    orig = S.StackedTrainer.train_step

    def interrupting(self, batches, step, sums):
        orig(self, batches, step, sums)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(S.StackedTrainer, "train_step", interrupting)
    with pytest.raises(Interrupted, match="SIGINT received: stopped after epoch 1 step 2 .* --resume .*--resume") as e:
        train(cfg, out=str(tmp_path / "cut"), echo=quiet)
    assert e.value.exit_code == 130
    cut = sorted((tmp_path / "cut").iterdir())
    assert all(load_checkpoint(d / "checkpoints" / "last.pt")["global_step"] == 2 for d in cut)
    assert not any((d / "summary.json").exists() for d in cut)
    monkeypatch.setattr(S.StackedTrainer, "train_step", orig)
    S.resume_seeds(cut, echo=quiet)
    for a, b in zip(full, cut):
        wa, wb = weights(a), weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        assert [r["top1"] for r in la] == [r["top1"] for r in lb]


def test_resumed_stacked_run_equals_the_single_runs(float64, tmp_path):
    cfg = tiny_cfg(**{"train.seeds": "[4,5]", "train.max_steps": 2})
    dirs = train(cfg, out=str(tmp_path), echo=quiet)
    S.resume_seeds(dirs, ["train.max_steps=null"], echo=quiet)
    for seed, d in zip((4, 5), dirs):
        assert load_checkpoint(d / "checkpoints" / "last.pt")["epoch"] == 1
        # the single run, cut and resumed at the same step (a resumed epoch's record covers its own steps)
        ref = train(tiny_cfg(**{"train.seed": seed, "train.max_steps": 2}), out=str(tmp_path / f"s{seed}"), echo=quiet)
        train(tiny_cfg(**{"train.seed": seed}), resume=str(ref), echo=quiet)
        assert max_diff(weights(d), weights(ref)) < 1e-12
        ra = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
        rb = json.loads((ref / "metrics.jsonl").read_text().splitlines()[-1])
        assert abs(ra["loss"] - rb["loss"]) < 1e-12 and ra["top1"] == rb["top1"]


def test_a_seed_directory_resumes_alone_as_a_single_run(tmp_path):
    dirs = train(tiny_cfg(**{"train.seeds": "[0,1]", "train.max_steps": 2}), out=str(tmp_path), echo=quiet)
    cfg = C.load(dirs[1] / "config.yaml", ["train.max_steps=3"])
    train(cfg, resume=str(dirs[1]), echo=quiet)
    assert load_checkpoint(dirs[1] / "checkpoints" / "last.pt")["global_step"] == 3
    # now the two seeds are at different steps: resuming them together is refused, nothing is written
    before = {d: sorted((f.name, f.stat().st_mtime_ns) for f in d.rglob("*")) for d in dirs}
    with pytest.raises(CheckpointError, match=r"the seeds' checkpoints are at different steps \(epoch, step: "
                                              r"\[\(0, 2\), \(0, 3\)\]\)"):
        S.resume_seeds(dirs, ["train.max_steps=4"], echo=quiet)
    assert before == {d: sorted((f.name, f.stat().st_mtime_ns) for f in d.rglob("*")) for d in dirs}


# ------------------------------------------------------------------------------------------------
# the NaN guard, refusals, the command line


def test_nan_in_one_model_stops_the_run_and_names_the_seed(monkeypatch, tmp_path):
    orig = S.StackedTrainer._forward_loss_eager

    def poisoned(self, batches):
        loss, parts, correct = orig(self, batches)
        return loss * torch.tensor([1.0, float("nan"), 1.0]), parts, correct

    monkeypatch.setattr(S.StackedTrainer, "_forward_loss_eager", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"the loss of seed 5 became NaN .* epoch 1 \(1-based\), step 0 .* all 3 "
                                                 r"seeds stopped and no checkpoint was written yet"):
        train(tiny_cfg(**{"train.seeds": "[4,5,6]"}), out=str(tmp_path), echo=quiet)
    assert not any((d / "summary.json").exists() for d in tmp_path.iterdir())


@pytest.mark.parametrize("over,msg", [
    ({"train.compile": "true"}, "train.compile=true is not supported with train.seeds yet"),
    ({"train.seeds": "[1,1]"}, r"train.seeds must be distinct integers >= 0 \(got \[1, 1\]\)"),
    ({"model.backbone": "tiny_unstackable"}, r"backbone tiny_unstackable cannot be stacked: backbone \(Unstackable\)"),
    ({"train.ema_decay": "0.9"}, "train.ema_decay=0.9 is not supported with train.seeds yet"),
    ({"train.accumulate": "2"}, "train.accumulate=2 is not supported with train.seeds yet"),
    ({"train.mix": "mixup"}, "train.mix='mixup' is not supported with train.seeds yet"),
    ({"model.freeze_bn": "true"}, "model.freeze_bn=True is not supported with train.seeds yet"),
    ({"optim.backbone_lr_scale": "0.1"}, "optim.backbone_lr_scale=0.1 is not supported with train.seeds yet"),
])
def test_unsupported_combinations_are_refused_before_anything_is_written(over, msg, tmp_path):
    class Unstackable(nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            self.conv, self.out_dim = nn.Conv2d(in_channels, 4, 3), 4

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    backbones_module._REGISTRY["tiny_unstackable"] = lambda *, in_channels, width: Unstackable(in_channels)
    try:
        with pytest.raises(ConfigError, match=msg):
            train(tiny_cfg(**{"train.seeds": "[0,1]", **over}), out=str(tmp_path / "runs"), echo=quiet)
    finally:
        backbones_module._REGISTRY.pop("tiny_unstackable", None)
    assert not (tmp_path / "runs").exists()


def test_keys_the_stacked_trainer_does_not_know_are_refused(monkeypatch, tmp_path):
    # a key added to the single-run trainer later is refused (not ignored) until the stacked trainer has it
    monkeypatch.setattr(S, "SUPPORTED_KEYS", S.SUPPORTED_KEYS - {"optim.nesterov"})
    with pytest.raises(ConfigError, match="optim.nesterov=True is not supported with train.seeds yet"):
        train(tiny_cfg(**{"train.seeds": "[0,1]", "optim.nesterov": "true"}), out=str(tmp_path / "r"), echo=quiet)
    S.check_supported(tiny_cfg(**{"train.seeds": "[0,1]"}))  # defaults pass
    assert not (tmp_path / "r").exists()


def test_a_method_with_its_own_forward_pass_is_refused(monkeypatch, tmp_path):
    from longtail.methods.ce import CE

    monkeypatch.setattr(CE, "forward_batch", lambda self, network, batch: network(batch.views[0]))
    with pytest.raises(ConfigError, match="method ce runs its own forward pass"):
        train(tiny_cfg(**{"train.seeds": "[0,1]"}), out=str(tmp_path / "r"), echo=quiet)
    assert not (tmp_path / "r").exists()


def test_existing_runs_and_mismatched_resumes_are_refused(tmp_path):
    dirs = train(tiny_cfg(**{"train.seeds": "[0,1]", "train.max_steps": 1}), out=str(tmp_path), echo=quiet)
    before = {d: (d / "checkpoints" / "last.pt").read_bytes() for d in dirs}
    with pytest.raises(OutputExistsError, match="digits_r10_ce_s1 already holds a run; continue the seeds with "
                                                 "'longtail train --resume .*_s1 --resume .*_s2'"):
        train(tiny_cfg(**{"train.seeds": "[1,2]", "train.max_steps": 1}), out=str(tmp_path), echo=quiet)
    other = train(tiny_cfg(**{"train.seed": 2, "train.max_steps": 1, "optim.lr": 0.01}),
                  out=str(tmp_path / "other"), echo=quiet)
    with pytest.raises(ConfigError, match="is not a seed of the same configuration .* optim.lr"):
        S.resume_seeds([dirs[0], other], echo=quiet)
    assert all((d / "checkpoints" / "last.pt").read_bytes() == b for d, b in before.items())


def test_cli_seeds_write_one_ordinary_run_per_seed(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(C.dump(tiny_cfg(**{"train.max_steps": 1})))
    out = tmp_path / "runs"
    assert main(["train", "--config", str(cfg_file), "--seeds", "3", "4", "--out", str(out), "name=exp"]) == 0
    dirs = sorted(out.iterdir())
    assert [d.name for d in dirs] == ["exp_s3", "exp_s4"]
    for seed, d in zip((3, 4), dirs):
        c = C.load(d / "config.yaml")
        assert c.train.seed == seed and c.train.seeds == [] and c.name == f"exp_s{seed}"
        assert json.loads((d / "summary.json").read_text())["seed"] == seed
    assert main(["eval", str(dirs[1])]) == 0
    assert "agrees with summary.json" in capsys.readouterr().out
    assert main(["report", str(dirs[0])]) == 0 and (dirs[0] / "report" / "report.md").is_file()
    assert main(["extract", str(dirs[1]), "--out", str(tmp_path / "feat"), "--splits", "train,test"]) == 0
    assert (tmp_path / "feat" / "features_test.h5").is_file()
    capsys.readouterr()
    assert main(["compare", str(dirs[0]), str(dirs[1]), "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert len(groups) == 1 and groups[0]["seeds"] == [3, 4]  # the two seeds are one configuration
    assert main(["train", "--resume", str(dirs[0]), "--resume", str(dirs[1]), "train.max_steps=2"]) == 0
    assert [load_checkpoint(d / "checkpoints" / "last.pt")["global_step"] for d in dirs] == [2, 2]
    capsys.readouterr()
    assert main(["train", "--resume", str(dirs[0]), "--resume", str(dirs[1])]) == 0  # finished: nothing to do
    assert "the 2 runs are finished: nothing to do" in capsys.readouterr().out
    assert main(["train", "--resume", str(dirs[0]), "--resume", str(dirs[1]), "optim.lr=0.5"]) != 0
    assert "is finished; resuming it would not apply optim.lr=0.5" in capsys.readouterr().err


def test_seed_config_is_the_single_run_config():
    cfg = tiny_cfg(**{"train.seeds": "[0,1]", "name": "x"})
    c = S.seed_config(cfg, 1)
    assert c.train.seed == 1 and c.train.seeds == [] and c.name == "x_s1" and cfg.train.seeds == [0, 1]
    assert C.run_name(S.seed_config(tiny_cfg(**{"train.seeds": "[2]"}), 2)) == "digits_r10_ce_s2"
    np.testing.assert_equal(S.seed_run_dirs([c], "/o")[0].path, Path("/o/x_s1"))


# ------------------------------------------------------------------------------------------------
# reproduce


def _suite(tmp_path: Path) -> Path:
    import yaml

    p = tmp_path / "tiny.yaml"
    tiny = ["model.backbone=resnet8", "model.width=4", "train.epochs=1", "train.max_steps=2", "train.batch_size=128",
            "optim.warmup_epochs=0", "optim.schedule=constant", "train.eval_every=1", "train.progress=false"]
    p.write_text(yaml.safe_dump({"overrides": tiny, "entries": [{"config": "quickstart.yaml",
                                                                 "overrides": ["method.name=ce"]}]}))
    return p


def test_reproduce_trains_a_configurations_seeds_together(tmp_path, monkeypatch):
    from longtail.reproduce import run_suite

    calls = []
    real = S.train_runs
    monkeypatch.setattr(S, "train_runs", lambda cfgs, dirs, **k: calls.append([c.train.seed for c in cfgs])
                        or real(cfgs, dirs, **k))
    lines = []
    run_suite(_suite(tmp_path), tmp_path / "out", seeds=(0, 1, 2), device="cpu", echo=lines.append)
    assert calls == [[0, 1, 2]]
    assert any("training the 3 seeds together" in l for l in lines)
    for s in (0, 1, 2):
        d = tmp_path / "out" / "runs" / f"digits_r10_ce_s{s}"
        assert json.loads((d / "summary.json").read_text())["seed"] == s
        assert C.load(d / "config.yaml").train.seeds == []
    assert "FAILED" not in (tmp_path / "out" / "RESULTS.md").read_text()


def test_reproduce_falls_back_to_one_seed_at_a_time(tmp_path, monkeypatch):
    from longtail.reproduce import run_suite

    monkeypatch.setattr(S, "SUPPORTED_KEYS", S.SUPPORTED_KEYS - {"optim.schedule"})  # "not stackable"
    lines = []
    run_suite(_suite(tmp_path), tmp_path / "out", seeds=(0, 1), device="cpu", echo=lines.append)
    assert any("cannot be trained together (optim.schedule='constant' is not supported" in l for l in lines)
    for s in (0, 1):
        assert (tmp_path / "out" / "runs" / f"digits_r10_ce_s{s}" / "summary.json").is_file()


# ------------------------------------------------------------------------------------------------
# no host reads in the stacked step


def _stacked_epoch_syncs(method: str, batch_size: int, monkeypatch, tmp_path):
    from longtail import hostsync
    from longtail.engine.logging import NullLogger
    from test_host_syncs import SyncRecorder, _cold_caches

    monkeypatch.setattr(hostsync, "reads_are_free", lambda t: False)  # the path a GPU takes
    over = {"method.name": method, **METHODS[method], "train.batch_size": batch_size, "train.eval_every": 0,
            "optim.grad_clip": 1.0, "train.seeds": "[0,1]"}
    cfg = tiny_cfg(**over)
    cfgs = [S.seed_config(cfg, s) for s in (0, 1)]
    ds, pieces = S.build_seed_pieces(cfgs, torch.device("cpu"))
    network = stack_networks([p.network for p in pieces])
    trainer = S.StackedTrainer(cfgs, [tmp_path] * 2, network=network, methods=[p.method for p in pieces],
                               train_batches=[p.train_batches for p in pieces], eval_batches=pieces[0].eval_batches,
                               device=torch.device("cpu"), loggers=[NullLogger()] * 2, echo=quiet)
    trainer.nan_check_every = 10**9  # as on a GPU
    trainer.save = lambda: None
    _cold_caches()
    with SyncRecorder() as rec:
        trainer.fit()
    return len(trainer.train_batches), rec.total(), rec.hits


@pytest.mark.parametrize("method", ["ce", "bbl"])
def test_stacked_host_syncs_do_not_grow_with_the_number_of_steps(method, monkeypatch, tmp_path):
    steps_a, syncs_a, hits_a = _stacked_epoch_syncs(method, 64, monkeypatch, tmp_path)
    steps_b, syncs_b, hits_b = _stacked_epoch_syncs(method, 160, monkeypatch, tmp_path)
    assert steps_a >= 2 * steps_b >= 6
    assert syncs_a == syncs_b, f"host syncs grow with the steps: {dict(hits_a - hits_b)}"
