"""The moving average of the weights (train.ema_decay): its update, that it never replaces the trained
weights, its files and summary entries, exact resume, and eval/report/compare/extract on runs with and
without it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longtail import config as C
from longtail.cli import main
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.ema import WeightEMA
from longtail.engine.run import train
from longtail.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import assert_same_weights, quiet, tiny_cfg  # noqa: E402

EMA = {"train.ema_decay": 0.8, "train.eval_every": 2}


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("warmup", [False, True])
def test_update_follows_the_written_out_recurrence(warmup):
    net = _bn_net()
    ema = WeightEMA(net, 0.9, warmup=warmup)
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for n in range(5):
        net.train()
        loss = net(torch.randn(8, 3)).square().mean()  # also moves BN's running statistics
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        d = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        for k, w in net.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * w.double() if w.is_floating_point() else w.clone().double()
    got = ema.module.state_dict()
    for k in ref:
        assert got[k].dtype == net.state_dict()[k].dtype
        torch.testing.assert_close(got[k].double(), ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert int(got["1.num_batches_tracked"]) == 5  # integer buffers are copied
    assert ema.updates == 5
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_decay_outside_zero_one_is_refused_by_the_class():
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        WeightEMA(_bn_net(), 1.0)


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1"])
def test_bad_decay_is_a_one_line_config_error(decay, tmp_path):
    cfg = C.Config()
    C.apply_overrides(cfg, ["data.name=digits", "device=cpu", f"train.ema_decay={decay}"])
    with pytest.raises(ConfigError, match=r"train.ema_decay must be in \(0, 1\)") as e:
        train(cfg, out=str(tmp_path / "run"), echo=quiet)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two epochs without and with the EMA (the same training otherwise)."""
    root = tmp_path_factory.mktemp("ema")
    plain, ema = root / "plain", root / "ema"
    train(tiny_cfg(**{"train.eval_every": 2}), out=str(plain), echo=quiet)
    train(tiny_cfg(**EMA), out=str(ema), echo=quiet)
    return {"plain": plain, "ema": ema}


def test_ema_never_replaces_the_trained_weights(runs):
    plain, ema = runs["plain"], runs["ema"]
    assert_same_weights(plain, ema)  # model.safetensors: the trained weights, identical with or without EMA
    s0, s1 = (json.loads((r / "summary.json").read_text()) for r in (plain, ema))
    for k in ("top1", "top5", "many", "medium", "few", "ece", "per_class"):
        assert s0[k] == s1[k], k  # the run's own metrics are the trained weights'
    assert "metrics_ema" not in s0 and not (plain / "model_ema.safetensors").exists()
    m = s1["metrics_ema"]
    assert set(m) == {"top1", "top5", "many", "medium", "few", "per_class", "ece"}
    assert s1["ema_decay"] == 0.8 and s1["ema_updates"] == s1["steps"] == 16
    raw, avg = load_file(str(ema / "model.safetensors")), load_file(str(ema / "model_ema.safetensors"))
    assert raw.keys() == avg.keys()
    assert not all(torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())
    lines = [json.loads(line) for line in (ema / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["ema_top1"] == pytest.approx(m["top1"]) and lines[-1]["top1"] == pytest.approx(s1["top1"])
    assert all("ema_top1" not in line for line in (json.loads(x) for x in (plain / "metrics.jsonl").read_text()
                                                    .splitlines()))


def test_ema_weights_equal_an_average_of_the_steps_weights(tmp_path, monkeypatch):
    """model_ema.safetensors is the recurrence over the trained weights after every optimiser step."""
    from longtail.engine.trainer import Trainer

    seen = []
    orig = Trainer.train_step

    def spy(self, batch, step, sums):
        orig(self, batch, step, sums)
        seen.append({k: v.detach().clone().double() if v.is_floating_point() else v.clone()
                     for k, v in self.network.state_dict().items()})

    monkeypatch.setattr(Trainer, "train_step", spy)
    out = tmp_path / "run"
    train(tiny_cfg(**{"train.ema_decay": 0.7, "train.epochs": 1, "train.eval_every": 0}), out=str(out), echo=quiet)
    from longtail.engine.devices import seed_everything
    from longtail.engine.run import build_pieces

    cfg = tiny_cfg(**{"train.epochs": 1})  # the initial weights are not saved: rebuild them as train() does
    seed_everything(cfg.train.seed, cfg.train.deterministic, torch.device("cpu"))
    ref = {k: v.double() if v.is_floating_point() else v
           for k, v in build_pieces(cfg, torch.device("cpu")).network.state_dict().items()}
    for w in seen:
        ref = {k: 0.7 * ref[k] + 0.3 * w[k] if w[k].is_floating_point() else w[k] for k in w}
    got = load_file(str(out / "model_ema.safetensors"))
    for k in ref:
        torch.testing.assert_close(got[k].to(ref[k].dtype), ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_with_ema_is_exact(runs, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(**EMA, **{"train.max_steps": 3}), out=str(out), echo=quiet)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["ema"]["updates"] == 3 and state["ema"]["decay"] == 0.8
    train(C.load(out / "config.yaml", ["train.max_steps=null"]), resume=str(out), echo=quiet)
    assert_same_weights(runs["ema"], out)
    a, b = load_file(str(runs["ema"] / "model_ema.safetensors")), load_file(str(out / "model_ema.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    s0, s1 = (json.loads((r / "summary.json").read_text()) for r in (runs["ema"], out))
    assert s0["metrics_ema"] == s1["metrics_ema"] and s0["ema_updates"] == s1["ema_updates"]


def test_eval_with_and_without_ema(runs, capsys):
    assert main(["eval", str(runs["ema"])]) == 0
    out = capsys.readouterr().out
    assert "agrees with summary.json" in out and "EMA" not in out
    assert main(["eval", str(runs["ema"]), "--ema", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    s = json.loads((runs["ema"] / "summary.json").read_text())
    assert m["agrees_with_summary"] is True and m["top1"] == pytest.approx(s["metrics_ema"]["top1"])
    assert main(["eval", str(runs["plain"]), "--ema"]) != 0
    err = capsys.readouterr().err.strip()
    assert "not trained with train.ema_decay" in err and len(err.splitlines()) == 1


def test_report_compare_and_extract_with_and_without_ema(runs, tmp_path, capsys):
    for name, run in runs.items():
        assert main(["report", str(run), "--out", str(tmp_path / f"report_{name}")]) == 0
    capsys.readouterr()
    with_ema = (tmp_path / "report_ema" / "report.md").read_text()
    without = (tmp_path / "report_plain" / "report.md").read_text()
    s = json.loads((runs["ema"] / "summary.json").read_text())
    row = next(line for line in with_ema.splitlines() if line.startswith("| EMA weights"))
    assert f"{s['metrics_ema']['top1']:.2f}" in row
    trained = next(line for line in with_ema.splitlines() if line.startswith("| trained"))
    assert f"{s['top1']:.2f}" in trained
    assert "EMA" not in without and "| weights |" not in without
    # compare: the raw numbers; the EMA run is its own configuration (train.ema_decay differs)
    assert main(["compare", str(runs["plain"]), str(runs["ema"]), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["differing_keys"] == ["train.ema_decay"]
    runs_out = {g["differences"]["train.ema_decay"]: g["runs"][0] for g in result["groups"]}
    assert runs_out[0.8]["top1"] == s["top1"] and runs_out[None]["top1"] == s["top1"]  # the trained weights'
    # extract reads the trained weights, with or without an EMA beside them
    assert main(["extract", str(runs["ema"]), "--out", str(tmp_path / "feat"), "--splits", "test"]) == 0
    assert (tmp_path / "feat" / "features_test.h5").is_file()


def test_overwrite_removes_the_old_runs_ema_weights(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs["ema"], out)
    train(tiny_cfg(**{"train.epochs": 1, "train.max_steps": 1}), out=str(out), echo=quiet, overwrite=True)
    assert not (out / "model_ema.safetensors").exists()
    assert "metrics_ema" not in json.loads((out / "summary.json").read_text())
