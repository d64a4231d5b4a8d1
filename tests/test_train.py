"""End-to-end training on the embedded digits set: run directory, resume, signals, NaN guard, bad input."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longtail import config as C
from longtail.cli import main
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.run import train
from longtail.engine.trainer import build_optimizer, optimizer_impl
from longtail.errors import CheckpointError, ConfigError, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**over) -> C.Config:
    """Digits, ResNet-8, constant lr: a few seconds per run on CPU."""
    cfg = C.Config()
    ov = {"data.name": "digits", "data.imbalance": "10", "model.backbone": "resnet8", "model.width": "8",
          "method.name": "ce", "optim.lr": "0.05", "optim.warmup_epochs": "0", "optim.schedule": "constant",
          "train.epochs": "2", "train.batch_size": "64", "train.eval_every": "1", "train.progress": "false",
          "eval.batch_size": "256", "device": "cpu"}
    ov.update({k: str(v) for k, v in over.items()})
    C.apply_overrides(cfg, [f"{k}={v}" for k, v in ov.items()])
    return C.validate(cfg)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """Two uninterrupted epochs."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_cfg(), out=str(out), echo=quiet)
    return out


def test_run_directory_contents(reference_run):
    r = reference_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints/last.pt"):
        assert (r / name).is_file(), name
    assert not (r / "checkpoints" / "best.pt").exists()  # digits has no validation split
    assert any((r / "tb").iterdir())
    s = json.loads((r / "summary.json").read_text())
    for key in ("dataset", "imbalance", "method", "epochs", "seed", "top1", "top5", "many", "medium", "few",
                "per_class", "ece", "wall_seconds", "device", "torch", "commit"):
        assert key in s, key
    assert s["dataset"] == "digits" and s["method"] == "ce" and s["epochs"] == 2 and s["device"] == "cpu"
    assert 0 <= s["top1"] <= 100 and len(s["per_class"]) == 10
    assert s["torch"] == torch.__version__
    assert s["data_verified"] is True
    lines = [json.loads(l) for l in (r / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert lines[-1]["top1"] == pytest.approx(s["top1"])
    assert all(l["images_per_s"] > 0 for l in lines)
    # the saved config reproduces the run's config exactly
    assert C.load(r / "config.yaml") == tiny_cfg()


def test_resume_after_one_epoch_is_bit_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(**{"train.epochs": 1}), out=str(out), echo=quiet)
    cfg = C.load(out / "config.yaml", ["train.epochs=2"])
    train(cfg, resume=str(out), echo=quiet)
    assert_same_weights(reference_run, out)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]


def test_resume_mid_epoch_is_bit_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(**{"train.max_steps": 3}), out=str(out), echo=quiet)  # stops inside epoch 1
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    cfg = C.load(out / "config.yaml", ["train.max_steps=null"])
    train(cfg, resume=str(out), echo=quiet)
    assert_same_weights(reference_run, out)


def test_eval_agrees_with_summary(reference_run, capsys):
    assert main(["eval", str(reference_run)]) == 0
    assert "agrees with summary.json" in capsys.readouterr().out


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from longtail.methods.ce import CE

    calls = {"n": 0}
    orig = CE.loss

    def poisoned(self, batch, output):
        loss, parts = orig(self, batch, output)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 11 else loss), parts  # epoch 2 (8 steps/epoch), step 2

    monkeypatch.setattr(CE, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 \(1-based\), step 2") as e:
        train(tiny_cfg(**{"train.epochs": 3}), out=str(out), echo=quiet)
    assert "last good checkpoint is kept" in str(e.value)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()


def _spawn(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "longtail", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_tells_how_to_resume(tmp_path, sig):
    out = tmp_path / "run"
    cfg = tiny_cfg(**{"train.epochs": 400, "train.eval_every": 0})
    (tmp_path / "c.yaml").write_text(C.dump(cfg))
    proc = _spawn(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out)], tmp_path)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + int(sig), err
    assert f"resume with: longtail train --resume {out}" in err and err.strip().count("\n") == 0
    assert "Traceback" not in err
    state = load_checkpoint(ckpt)
    assert state["global_step"] >= 8
    assert not (out / "summary.json").exists()
    # and the run does continue from there
    cfg2 = C.load(out / "config.yaml", ["train.epochs=" + str(state["epoch"] + 1)])
    train(cfg2, resume=str(out), echo=quiet)
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == (state["epoch"] + 1) * 8


# ---------------------------------------------------------------------------------------------------- bad input


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def write_cfg(tmp_path, cfg: C.Config) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(C.dump(cfg))
    return p


def test_unknown_key_names_nearest(tmp_path, capsys):
    p = write_cfg(tmp_path, tiny_cfg())
    code, _, err = run_cli(["train", "--config", str(p), "--out", str(tmp_path / "r"), "optim.learning_rate=0.1"],
                           capsys)
    assert code == 2 and "unknown config key 'optim.learning_rate'" in err and "optim.lr" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_unknown_key_in_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epoch: 3\n")
    code, _, err = run_cli(["train", "--config", str(p)], capsys)
    assert code == 2 and "train.epoch'" in err and "train.epochs" in err


@pytest.mark.parametrize("override,needle", [
    ("optim.lr=-0.1", "optim.lr must be > 0"),
    ("data.imbalance=0.5", "data.imbalance must be >= 1"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.batch_size=abc", "train.batch_size must be an integer"),
    ("data.augment=autoaugmnt", "did you mean 'autoaugment'"),
    ("method.name=ldam", "unknown method 'ldam'"),
    ("device=gpu", "device must be auto, cpu, cuda"),
])
def test_invalid_values(tmp_path, capsys, override, needle):
    p = write_cfg(tmp_path, tiny_cfg())
    code, _, err = run_cli(["train", "--config", str(p), "--out", str(tmp_path / "r"), override], capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_debug_shows_traceback(tmp_path):
    p = write_cfg(tmp_path, tiny_cfg())
    with pytest.raises(C.ConfigError):
        main(["train", "--debug", "--config", str(p), "optim.lr=-1"])


def test_existing_run_is_not_overwritten(reference_run, tmp_path, capsys):
    p = write_cfg(tmp_path, tiny_cfg())
    before = (reference_run / "summary.json").read_bytes()
    code, _, err = run_cli(["train", "--config", str(p), "--out", str(reference_run)], capsys)
    assert code == 2 and "--resume" in err
    assert (reference_run / "summary.json").read_bytes() == before


def test_resume_with_shape_change_is_refused(reference_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli(["train", "--resume", str(run), "model.width=16"], capsys)
    assert code == 2 and "changes the model's shapes" in err and "has shape" in err, err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint(reference_run, tmp_path, damage):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference_run, run)
    ckpt = run / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    damaged = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train(C.load(run / "config.yaml"), resume=str(run), echo=quiet)
    assert ckpt.read_bytes() == damaged  # left as it is


def test_resume_without_checkpoint(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.yaml").write_text(C.dump(tiny_cfg()))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_cfg(), resume=str(run), echo=quiet)


def test_cuda_requested_without_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    p = write_cfg(tmp_path, tiny_cfg())
    code, _, err = run_cli(["train", "--config", str(p), "--out", str(tmp_path / "r"), "device=cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("over", [
    {"data.augment": "autoaugment"}, {"data.augment": "randaugment"}, {"data.augment": "simclr"},
    {"data.augment": "none", "data.cutout": 2}, {"data.sampler": "class_balanced", "data.sampler_k": 4},
    {"data.sampler": "sqrt"}, {"data.sampler": "progressive"}, {"train.deterministic": "true"},
    {"optim.nesterov": "true", "optim.grad_clip": 1.0, "optim.schedule": "cosine", "optim.warmup_epochs": 1},
    {"method.name": "focal"}, {"method.name": "cb", "method.cb_loss": "focal"},
    {"method.name": "ldam_drw", "model.head": "cosine", "method.drw_epoch": 1}, {"method.name": "la"},
    {"data.profile": "step"}, {"train.channels_last": "true"},
])
def test_options_train_end_to_end(tmp_path, over):
    cfg = tiny_cfg(**{"train.max_steps": 10, "train.epochs": 2, **over})
    out = train(cfg, out=str(tmp_path / "r"), echo=quiet)
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 10 and 0 <= s["top1"] <= 100
    assert not torch.are_deterministic_algorithms_enabled()  # global mode restored after the run


def test_posthoc_adjustment_at_evaluation(reference_run, capsys):
    assert main(["eval", str(reference_run), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["agrees_with_summary"] is True
    assert main(["eval", str(reference_run), "eval.posthoc_tau=1.0", "--json"]) == 0
    adjusted = json.loads(capsys.readouterr().out)
    assert adjusted["per_class"] != plain["per_class"]  # the prior moved predictions towards the tail


def test_report_and_compare_cli(reference_run, tmp_path, capsys):
    import shutil

    assert main(["report", str(reference_run)]) == 0
    for f in ("report.md", "per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png"):
        assert (reference_run / "report" / f).is_file()
    other = tmp_path / "seed1"
    train(tiny_cfg(**{"train.seed": 1}), out=str(other), echo=quiet)
    capsys.readouterr()
    assert main(["compare", str(reference_run), str(other)]) == 0
    table = capsys.readouterr().out
    tops = [json.loads((d / "summary.json").read_text())["top1"] for d in (reference_run, other)]
    import statistics

    assert f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}" in table and "| 2 |" in table
    shutil.rmtree(other)


def test_list_file_dataset_trains_through_the_loader(tmp_path):
    """ImageNet-LT-style list files: images on disk, `path label` lines, the DataLoader source."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    lines = {"train": [], "test": []}
    for split, per_class in (("train", [6, 3, 1]), ("test", [2, 2, 2])):
        for c, n in enumerate(per_class):
            for i in range(n):
                rel = f"{split}/c{c}/{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / rel)
                lines[split].append(f"{rel} {c}")
    for split in lines:
        (tmp_path / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    cfg = tiny_cfg(**{"data.name": "imagenet_lt", "data.root": str(root), "data.train_list": str(tmp_path / "train.txt"),
                      "data.test_list": str(tmp_path / "test.txt"), "data.num_workers": 0, "train.batch_size": 4,
                      "data.augment": "standard", "train.max_steps": 3})
    out = train(cfg, out=str(tmp_path / "r"), echo=quiet)
    s = json.loads((out / "summary.json").read_text())
    assert s["train_counts"] == [6, 3, 1] and s["num_test"] == 6 and s["steps"] == 3
    # a label out of range in the list is reported with its line number, before anything is written
    (tmp_path / "bad.txt").write_text("train/c0/0.png 0\ntrain/c0/1.png 7\n")
    cfg.data.train_list, cfg.data.num_classes = str(tmp_path / "bad.txt"), 3
    with pytest.raises(Exception, match="line 2"):
        train(cfg, out=str(tmp_path / "r2"), echo=quiet)
    assert not (tmp_path / "r2").exists()


def test_compiled_network_is_wired_in(tmp_path, monkeypatch):
    """train.compile=true runs the step through torch.compile's wrapper and saves the plain module.

    A real compile takes minutes on CPU, so a stand-in wrapper checks the wiring: it refuses ``len()`` and
    ``bool()`` like torch's OptimizedModule (a bug we had) and counts its calls.
    """
    calls = {"n": 0}

    class FakeCompiled:
        def __init__(self, mod):
            self._orig_mod = mod

        def __call__(self, *a, **k):
            calls["n"] += 1
            return self._orig_mod(*a, **k)

        def __len__(self):
            raise TypeError("does not support len()")

        def __getattr__(self, name):
            return getattr(self._orig_mod, name)

    monkeypatch.setattr(torch, "compile", lambda mod, **kw: FakeCompiled(mod))
    out = train(tiny_cfg(**{"train.compile": "true", "train.max_steps": 3}), out=str(tmp_path / "r"), echo=quiet)
    assert calls["n"] >= 3
    assert not any(k.startswith("_orig_mod") for k in weights(out))


def test_run_files_are_readable(reference_run):
    """Atomic writes go through mkstemp (mode 0600); the final files get the usual umask mode."""
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.yaml", "summary.json", "checkpoints/last.pt", "metrics.jsonl"):
        assert stat.S_IMODE((reference_run / name).stat().st_mode) == 0o666 & ~mask, name


@pytest.mark.parametrize("impl,device_type,expected", [
    ("auto", "cuda", {"fused": True}), ("auto", "cpu", {"fused": True}), ("auto", "mps", {}),
    ("fused", "cpu", {"fused": True}),
    ("foreach", "cuda", {"foreach": True}), ("for_loop", "cuda", {"foreach": False})])
def test_optimizer_implementation_choice(impl, device_type, expected):
    assert optimizer_impl(impl, device_type) == expected


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop", "auto"])
def test_every_optimizer_implementation_takes_the_same_step(impl):
    torch.manual_seed(0)
    ref_net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    net = copy.deepcopy(ref_net)
    cfg = C.Config()
    C.apply_overrides(cfg, ["optim.lr=0.1", "optim.momentum=0.9", "optim.nesterov=true",
                            "optim.weight_decay=1e-3", f"optim.impl={impl}"])
    opt = build_optimizer(net, cfg)
    assert bool(opt.defaults.get("fused")) == (impl in ("fused", "auto"))  # auto is fused on CPU too
    x = torch.randn(8, 5)
    # the reference: SGD with nesterov momentum and coupled weight decay, written out
    bufs = [torch.zeros_like(q) for q in ref_net.parameters()]
    for _ in range(3):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
        ref_net.zero_grad()
        ref_net(x).square().sum().backward()
        with torch.no_grad():
            for q, b in zip(ref_net.parameters(), bufs):
                d = q.grad + 1e-3 * q
                b.mul_(0.9).add_(d)
                q.sub_(0.1 * (d + 0.9 * b))
    for a, b in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_optimizer_implementation_is_a_clear_error():
    cfg = C.Config()
    C.apply_overrides(cfg, ["optim.impl=fast"])
    with pytest.raises(ConfigError, match="optim.impl"):
        C.validate(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_optimizer_is_fused_on_cuda():
    net = torch.nn.Linear(3, 2).cuda()
    assert build_optimizer(net, C.Config()).defaults["fused"] is True
