"""Trainer options beside SGD: AdamW, the SGDR schedule, label smoothing, gradient accumulation.

Each is checked against a written-out reference; with the options off, the step is bit-identical to an
explicit ``torch.optim.SGD`` step.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail import config as C
from longtail.cli import main
from longtail.engine import run as R
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.logging import NullLogger
from longtail.engine.schedule import lr_at
from longtail.engine.trainer import EpochSums, Trainer, build_optimizer, set_lr
from longtail.errors import ConfigError, NonFiniteLossError
from longtail.losses import ClassBalancedLoss, CrossEntropyLoss, LDAMLoss, LogitAdjustedLoss, class_balanced_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import quiet, tiny_cfg  # noqa: E402


def _cfg(overrides: list[str]) -> C.Config:
    cfg = C.Config()
    C.apply_overrides(cfg, overrides)
    return cfg


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


# ---------------------------------------------------------------------------------------------- AdamW


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
def test_adamw_step_matches_the_written_out_update(impl):
    ref, net = _net(), _net()
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.99, 1e-6, 0.05
    opt = build_optimizer(net, _cfg(["optim.name=adamw", f"optim.lr={lr}", f"optim.betas=[{b1}, {b2}]",
                                     f"optim.eps={eps}", f"optim.weight_decay={wd}", f"optim.impl={impl}"]))
    assert isinstance(opt, torch.optim.AdamW)
    x = torch.randn(8, 5)
    m = [torch.zeros_like(q) for q in ref.parameters()]
    v = [torch.zeros_like(q) for q in ref.parameters()]
    for t in range(1, 4):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
        ref.zero_grad()
        ref(x).square().sum().backward()
        with torch.no_grad():  # Loshchilov & Hutter: decoupled decay, then the bias-corrected Adam step
            for q, mq, vq in zip(ref.parameters(), m, v):
                q.mul_(1 - lr * wd)
                mq.mul_(b1).add_((1 - b1) * q.grad)
                vq.mul_(b2).add_((1 - b2) * q.grad * q.grad)
                m_hat, v_hat = mq / (1 - b1 ** t), vq / (1 - b2 ** t)
                q.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_optimizers_take_parameter_groups_with_lr_scale():
    net = _net()
    head = list(net[2].parameters())
    groups = [{"params": list(net[0].parameters())}, {"params": head, "lr_scale": 0.1}]
    for name in ("sgd", "adamw"):
        opt = build_optimizer(net, _cfg([f"optim.name={name}", "optim.lr=0.5"]), groups=[dict(g) for g in groups])
        set_lr(opt, 0.2)
        assert [g["lr"] for g in opt.param_groups] == [0.2, pytest.approx(0.02)]
        assert opt.param_groups[1]["lr_scale"] == 0.1


def test_default_sgd_step_is_bit_identical_to_an_explicit_sgd_step():
    """With every new option off, the trainer's steps equal a plain torch.optim.SGD loop bit for bit."""
    cfg = tiny_cfg(**{"optim.weight_decay": 2e-4, "optim.momentum": 0.9})
    torch.manual_seed(0)
    p = R.build_pieces(cfg, torch.device("cpu"))
    ref = copy.deepcopy(p.network)
    trainer = Trainer(cfg, Path("unused"), network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, device=torch.device("cpu"), logger=NullLogger())
    assert trainer.ema is None and type(trainer.optimizer) is torch.optim.SGD
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4, fused=True)
    p.network.train()
    ref.train()
    sums = EpochSums(torch.device("cpu"))
    for step, batch in enumerate(p.train_batches.epoch(0)):
        if step == 3:
            break
        trainer.train_step(batch, step, sums)
        loss = F.cross_entropy(ref(batch.views[0]).logits, batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for (k, a), b in zip(p.network.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------------------------------- SGDR


def _sgdr_reference(e: int, lr: float, warmup: int, periods: list[tuple[int, int]]) -> float:
    """Written out: linear warm-up, then cosine periods given as (first epoch after warm-up, length)."""
    if e < warmup:
        return lr * (e + 1) / warmup
    t = e - warmup
    for start, length in periods:
        if start <= t < start + length:
            return lr / 2 * (1 + math.cos(math.pi * (t - start) / length))
    raise AssertionError("epoch outside the listed periods")


@pytest.mark.parametrize("mult,periods", [(2, [(0, 2), (2, 4), (6, 8), (14, 16)]),
                                          (1, [(3 * i, 3) for i in range(10)])])
def test_cosine_restarts_schedule_at_every_epoch(mult, periods):
    period = periods[0][1]
    cfg = _cfg(["optim.schedule=cosine_restarts", "optim.lr=0.4", "optim.warmup_epochs=3",
                f"optim.restart_period={period}", f"optim.restart_mult={mult}", "train.epochs=25"])
    C.validate(cfg)
    got = [lr_at(e, 25, cfg.optim) for e in range(25)]
    want = [_sgdr_reference(e, 0.4, 3, periods) for e in range(25)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    restarts = [3 + start for start, _ in periods if 3 + start < 25]
    assert all(got[e] == pytest.approx(0.4) for e in restarts)  # each period starts again at the peak
    assert all(got[e] < got[e - 1] for e in range(4, 25) if e not in restarts)  # and decays in between


def test_trainer_sets_the_restart_schedule_per_epoch(tmp_path):
    out = tmp_path / "run"
    R.train(tiny_cfg(**{"train.epochs": 3, "optim.schedule": "cosine_restarts", "optim.restart_period": 1,
                        "optim.restart_mult": 2, "train.max_steps": 17, "train.eval_every": 0}), out=str(out),
            echo=quiet)
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.05, 0.05])  # period 1 (epoch 1), then the 2-epoch period starts again
    assert load_checkpoint(out / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == \
        pytest.approx(0.05 / 2 * (1 + math.cos(math.pi / 2)))


# ---------------------------------------------------------------------------------------------- label smoothing


def _log_softmax_row(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _smoothed_ce_reference(logits, targets, eps, weight=None) -> float:
    """Per sample: −(1 − ε) w_y log p_y − (ε / C) Σ_c w_c log p_c; divided by Σ_i w_{y_i}."""
    n, c = len(logits), len(logits[0])
    w = weight or [1.0] * c
    num = den = 0.0
    for i in range(n):
        logp = _log_softmax_row(logits[i])
        y = targets[i]
        term = -(1 - eps) * w[y] * logp[y]
        for k in range(c):
            term -= eps / c * w[k] * logp[k]
        num += term
        den += w[y]
    return num / den


def _data(seed=0, n=7, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("eps", [0.1, 0.35])
def test_label_smoothed_ce_matches_the_written_out_reference(eps):
    logits, y = _data()
    weight = [0.5, 2.0, 1.0, 3.0]
    plain = CrossEntropyLoss(label_smoothing=eps)(logits, y)
    weighted = CrossEntropyLoss(weight=torch.tensor(weight), label_smoothing=eps)(logits, y)
    assert plain.item() == pytest.approx(_smoothed_ce_reference(logits.tolist(), y.tolist(), eps), rel=1e-5)
    assert weighted.item() == pytest.approx(_smoothed_ce_reference(logits.tolist(), y.tolist(), eps, weight), rel=1e-5)
    counts = [40, 10, 5, 2]
    cbw = class_balanced_weights(counts, 0.99).tolist()
    ref = _smoothed_ce_reference(logits.tolist(), y.tolist(), eps, cbw)  # divided by Σ_i w_{y_i}
    cb = ClassBalancedLoss(counts, beta=0.99, label_smoothing=eps, reduction="normalized")(logits, y)
    assert cb.item() == pytest.approx(ref, rel=1e-5)
    # the default reduction (the class-balanced paper's) divides the same sum by the batch size
    cb = ClassBalancedLoss(counts, beta=0.99, label_smoothing=eps)(logits, y)
    assert cb.item() == pytest.approx(ref * sum(cbw[t] for t in y.tolist()) / len(y), rel=1e-5)


@pytest.mark.parametrize("eps", [0.1, 0.35])
def test_label_smoothing_applies_to_the_adjusted_logits_of_la_and_ldam(eps):
    logits, y = _data(1)
    counts = [40, 10, 5, 2]
    tau = 1.5
    prior = [math.log(n / sum(counts)) for n in counts]
    adjusted = [[s + tau * lp for s, lp in zip(row, prior)] for row in logits.tolist()]
    la = LogitAdjustedLoss(counts, tau=tau, label_smoothing=eps)(logits, y)
    assert la.item() == pytest.approx(_smoothed_ce_reference(adjusted, y.tolist(), eps), rel=1e-5)

    scale, max_margin = 10.0, 0.5
    raw = [n ** -0.25 for n in counts]
    margins = [max_margin * r / max(raw) for r in raw]
    ldam_adjusted = [[s - (scale * margins[t] if k == t else 0.0) for k, s in enumerate(row)]
                     for row, t in zip(logits.tolist(), y.tolist())]
    weight = [0.5, 2.0, 1.0, 3.0]
    ldam = LDAMLoss(counts, max_margin=max_margin, scale=scale, weight=weight, label_smoothing=eps)(logits, y)
    assert ldam.item() == pytest.approx(_smoothed_ce_reference(ldam_adjusted, y.tolist(), eps, weight), rel=1e-5)


def test_zero_smoothing_is_bit_identical_to_the_unsmoothed_losses():
    logits, y = _data(2)
    counts = [40, 10, 5, 2]
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert torch.equal(CrossEntropyLoss(weight=w, label_smoothing=0.0)(logits, y), F.cross_entropy(logits, y, weight=w))
    lp = torch.tensor(counts, dtype=torch.float64)
    lp = (lp / lp.sum()).log().float()
    assert torch.equal(LogitAdjustedLoss(counts, label_smoothing=0.0)(logits, y), F.cross_entropy(logits + lp, y))


@pytest.mark.parametrize("method,extra", [("ce", []), ("la", []), ("cb", []), ("ldam_drw", ["model.head=cosine"])])
def test_methods_pass_label_smoothing_to_their_loss(method, extra):
    cfg = _cfg([f"method.name={method}", "method.label_smoothing=0.2", *extra])
    C.validate(cfg)
    m = R.create_method(cfg, [30, 10, 3])
    assert m.criterion.label_smoothing == 0.2
    logits, y = _data(3, c=3)
    smoothed = m.criterion(logits, y)
    cfg.method.label_smoothing = 0.0
    assert not torch.equal(smoothed, R.create_method(cfg, [30, 10, 3]).criterion(logits, y))


@pytest.mark.parametrize("overrides,needle", [
    (["method.name=focal", "method.label_smoothing=0.1"], "not defined for the focal loss"),
    (["method.name=cb", "method.cb_loss=focal", "method.label_smoothing=0.1"], "not defined for the focal loss"),
    (["method.name=ce", "method.label_smoothing=-0.1"], "method.label_smoothing must be >= 0"),
    (["method.name=la", "method.label_smoothing=1"], "method.label_smoothing must be < 1"),
    (["optim.name=adam"], "optim.name must be one of sgd, adamw"),
    (["optim.name=adamw", "optim.betas=[0.9]"], "optim.betas must be two numbers"),
    (["optim.name=adamw", "optim.betas=[0.9, 1.0]"], "optim.betas must be two numbers"),
    (["optim.eps=0"], "optim.eps must be > 0"),
    (["optim.name=adamw", "optim.nesterov=true"], "optim.nesterov applies to optim.name=sgd only"),
    (["optim.restart_period=0"], "optim.restart_period must be >= 1"),
    (["optim.restart_mult=0"], "optim.restart_mult must be >= 1"),
    (["train.accumulate=0"], "train.accumulate must be >= 1"),
    (["train.batch_size=64", "train.accumulate=3"], "must be divisible by train.accumulate=3"),
    (["method.name=bcl", "model.head=cosine", "train.accumulate=2"], "not a mean of per-sample terms"),
    (["method.name=supcon", "train.accumulate=2"], "not a mean of per-sample terms"),
])
def test_bad_values_are_one_line_config_errors_and_nothing_is_written(overrides, needle, tmp_path):
    cfg = C.Config()
    C.apply_overrides(cfg, ["data.name=digits", "device=cpu", *overrides])
    with pytest.raises(ConfigError, match=needle) as e:
        R.train(cfg, out=str(tmp_path / "run"), echo=quiet)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_bad_value_on_the_command_line_prints_one_line(tmp_path, capsys):
    code = main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"),
                 "--out", str(tmp_path / "run"), "train.accumulate=0"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "train.accumulate must be >= 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- accumulation


def _one_step(method_overrides: list[str], k: int, batch_size: int = 64, take: int | None = None):
    """The weights after one optimiser step on the first batch with train.accumulate=k (BN in eval mode, so
    micro-batches see the same normalisation)."""
    cfg = tiny_cfg(**{"train.accumulate": k, "train.batch_size": batch_size,
                      **dict(o.split("=", 1) for o in method_overrides)})
    torch.manual_seed(0)
    p = R.build_pieces(cfg, torch.device("cpu"))
    trainer = Trainer(cfg, Path("unused"), network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, device=torch.device("cpu"), logger=NullLogger())
    p.method.on_epoch_start(0)
    p.network.eval()
    batch = next(iter(p.train_batches.epoch(0)))
    if take is not None:  # a short (last) batch that k does not divide
        from longtail.data.batches import Batch

        batch = Batch(views=[v[:take] for v in batch.views], labels=batch.labels[:take], index=batch.index[:take])
    sums = EpochSums(torch.device("cpu"))
    trainer.train_step(batch, 0, sums)
    return p.network.state_dict(), sums


@pytest.mark.parametrize("method", [
    ["method.name=ce"], ["method.name=ce", "method.label_smoothing=0.1"],
    ["method.name=cb", "method.cb_beta=0.99"],  # class-weighted mean: micro-batches weighed by their Σ w
    ["method.name=cb", "method.cb_beta=0.99", "method.cb_loss=focal"],
    ["method.name=ldam_drw", "model.head=cosine", "method.drw_epoch=0", "method.drw_beta=0.99"],
    [f"plugins=[{Path(__file__).resolve().parents[1] / 'examples' / 'inverse_frequency.py'}]",
     "method.name=inverse_frequency"]])  # a plugin's weighted mean: its criterion's sample_weights
def test_accumulated_step_equals_the_full_batch_step(method):
    ref, ref_sums = _one_step(method, 1)
    for k in (2, 4):
        got, sums = _one_step(method, k)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=f"k={k}: {name}")
        torch.testing.assert_close(sums.totals(), ref_sums.totals(), rtol=1e-5, atol=1e-6)  # the step's loss, acc


def test_accumulation_through_the_compiled_step():
    """train.compile: the compiled forward + loss runs once per micro-batch (its own static shape)."""
    ref, _ = _one_step(["method.name=cb", "method.cb_beta=0.99"], 1)
    got, _ = _one_step(["method.name=cb", "method.cb_beta=0.99", "train.compile=true",
                        "train.compile_backend=eager"], 2)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_with_the_options_raise_no_sync_error(tmp_path):
    """On a GPU, torch's sync debug mode turns any host sync inside the steps into an error: accumulation
    of a class-weighted loss, label smoothing, the EMA update and fused AdamW."""
    cfg = tiny_cfg(**{"device": "cuda", "method.name": "ldam_drw", "model.head": "cosine", "method.drw_epoch": 0,
                      "method.label_smoothing": 0.1, "train.accumulate": 2, "train.ema_decay": 0.9,
                      "train.ema_warmup": True, "optim.name": "adamw", "optim.lr": 1e-3})
    dev = torch.device("cuda")
    p = R.build_pieces(cfg, dev)
    trainer = Trainer(cfg, tmp_path, network=p.network, method=p.method, train_batches=p.train_batches,
                      eval_batches=p.eval_batches, device=dev, logger=NullLogger())
    assert trainer.optimizer.defaults["fused"] is True
    trainer.method.on_epoch_start(0, fresh=True)
    trainer.network.train()
    sums = EpochSums(dev)
    batches = iter(p.train_batches.epoch(0))
    trainer.train_step(next(batches), 0, sums)  # warm-up: lazy CUDA initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches, start=1):
            trainer.train_step(batch, step, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sums.seen == len(p.dataset.train) and trainer.ema.updates == step + 1


def test_accumulation_of_a_short_batch_that_k_does_not_divide():
    ref, _ = _one_step(["method.name=cb", "method.cb_beta=0.99"], 1, take=37)
    got, sums = _one_step(["method.name=cb", "method.cb_beta=0.99"], 4, take=37)
    assert sums.seen == 37
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)


def test_accumulation_changes_the_step_when_batchnorm_trains():
    """The documented caveat: in training mode BatchNorm normalises each micro-batch by its own statistics."""
    def step(k):
        cfg = tiny_cfg(**{"train.accumulate": k})
        torch.manual_seed(0)
        p = R.build_pieces(cfg, torch.device("cpu"))
        trainer = Trainer(cfg, Path("unused"), network=p.network, method=p.method, train_batches=p.train_batches,
                          eval_batches=p.eval_batches, device=torch.device("cpu"), logger=NullLogger())
        p.network.train()
        trainer.train_step(next(iter(p.train_batches.epoch(0))), 0, EpochSums(torch.device("cpu")))
        return p.network.state_dict()

    a, b = step(1), step(2)
    assert not all(torch.allclose(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_accumulation_counts_optimiser_steps(tmp_path):
    out = tmp_path / "run"
    R.train(tiny_cfg(**{"train.accumulate": 4, "train.max_steps": 11}), out=str(out), echo=quiet)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 11)  # 8 steps per epoch
    assert json.loads((out / "summary.json").read_text())["steps"] == 11
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [8]


def test_nan_guard_names_the_optimiser_step_under_accumulation(tmp_path, monkeypatch):
    from longtail.methods.ce import CE

    calls = {"n": 0}
    orig = CE.loss

    def poisoned(self, batch, output):
        loss, parts = orig(self, batch, output)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 22 else loss), parts  # 2 calls a step: epoch 2, step 2

    monkeypatch.setattr(CE, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 \(1-based\), step 2 "):
        R.train(tiny_cfg(**{"train.epochs": 3, "train.accumulate": 2, "train.eval_every": 0}), out=str(out),
                echo=quiet)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)


def test_accumulation_and_ema_under_ddp_equal_one_process(tmp_path):
    """Two gloo processes, each accumulating its half of every global batch in 2 micro-batches (gradients
    all-reduced once per step), give the weights and the EMA of one process taking full-batch steps."""
    import subprocess

    from test_ddp_train import TINY, TRAIN_SCRIPT, env, torchrun

    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    over = TINY + ["method.name=ce", "train.epochs=1", "train.eval_every=0", "train.ema_decay=0.5"]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), *over], env=env(FREEZE_BN="1"),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun([str(script), str(tmp_path / "ddp"), *over, "train.accumulate=2"], timeout=300, FREEZE_BN="1")
    from safetensors.torch import load_file

    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(tmp_path / "single" / name)), load_file(str(tmp_path / "ddp" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"{name}: {k}")
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["steps"] == 8
