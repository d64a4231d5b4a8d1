"""DDP training with two gloo processes on CPU, started by torchrun (``torch.distributed.run``).

Each torchrun launch costs a few seconds (two Python processes importing torch), so the runs are tiny.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.data.samplers import build_sampler, shard
from longtail.engine import distributed as dist
from longtail.engine.run import evaluate_run

# digits, ResNet-8, constant lr, no augmentation (per-rank augmentation seeds would break exactness)
TINY = ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8", "optim.lr=0.05",
        "optim.warmup_epochs=0", "optim.schedule=constant", "train.batch_size=64", "train.progress=false",
        "eval.batch_size=128", "device=cpu", "data.augment=none"]

# A training script that removes every BatchNorm layer: per-rank BN batch statistics differ from the
# global batch's (and SyncBatchNorm does not run on CPU), so exact single-vs-DDP equality needs no BN.
NO_BN_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from longtail import config as C
    from longtail.engine import run as R

    _create = R.create_method

    def _strip_bn(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, torch.nn.Identity())
            else:
                _strip_bn(child)

    def create_method(cfg, counts):
        method = _create(cfg, counts)
        build = method.build_network

        def build_network(*a, **k):
            net = build(*a, **k)
            _strip_bn(net)
            return net

        method.build_network = build_network
        return method

    R.create_method = create_method
    torch.set_num_threads(1)
    cfg = C.Config()
    C.apply_overrides(cfg, sys.argv[2:])
    R.train(C.validate(cfg), out=sys.argv[1], echo=lambda *a: None)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LONGTAIL_SYNCBN"):
        e.pop(k, None)
    return e


def torchrun(args: list[str], nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *args]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def test_ddp_equals_single_process_on_the_same_global_batch(tmp_path):
    script = tmp_path / "train_no_bn.py"
    script.write_text(NO_BN_SCRIPT)
    over = TINY + ["method.name=ce", "train.epochs=1", "train.max_steps=3", "train.eval_every=0",
                   "optim.weight_decay=5e-4"]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), *over], env=env(),
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun([str(script), str(tmp_path / "ddp"), *over])
    a, b = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"{k} differs")
    sa = json.loads((tmp_path / "single" / "summary.json").read_text())
    sb = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] == 3
    assert sb["num_test"] == sa["num_test"] == 500
    assert sb["top1"] == pytest.approx(sa["top1"], abs=0.21)  # at most one image flips on a near-tie


def test_ddp_cli_run_writes_one_run_dir_and_eval_agrees(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("")
    out = tmp_path / "runs" / "r"
    r = torchrun(["-m", "longtail", "train", "--config", str(cfg), "--out", str(out), *TINY,
                  "method.name=bcl", "train.epochs=1", "train.eval_every=1",
                  f"out_dir={tmp_path / 'runs'}"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]  # no other rank wrote anything
    assert r.stdout.count("run directory:") == 1  # only rank 0 prints
    s = json.loads((out / "summary.json").read_text())
    assert s["num_test"] == 500
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] == s["steps"] >= 7  # 486 digits train images, global batch 64
    assert np.isfinite(rec["loss"]) and 0.0 <= rec["train_acc"] <= 100.0
    assert (out / "checkpoints" / "last.pt").is_file()
    m = evaluate_run(out, [], echo=lambda *a: None)
    assert m["num_samples"] == 500
    assert m["agrees_with_summary"] is True
    for k in ("top1", "many", "medium", "few", "ece"):
        assert m[k] == pytest.approx(s[k], abs=1e-6)


@pytest.mark.parametrize("world_size,k", [(2, 1), (3, 1), (2, 4)])
def test_class_balanced_shards_partition_each_global_batch(world_size, k):
    labels = np.repeat(np.arange(5), [40, 20, 10, 5, 3])
    sampler = build_sampler("class_balanced", labels, seed=3, k=k)
    batch = 12
    for epoch in range(2):
        order = sampler.epoch_indices(epoch)
        epoch_parts = [[] for _ in range(world_size)]
        for step in range(len(order) // batch):
            g = order[step * batch:(step + 1) * batch]
            parts = [shard(g, r, world_size) for r in range(world_size)]
            assert sum(len(p) for p in parts) == len(g)
            assert torch.equal(torch.sort(torch.cat(parts)).values, torch.sort(g).values)
            assert all(len(p) == batch // world_size for p in parts)
            for r in range(world_size):
                epoch_parts[r].append(parts[r])
        # over the epoch the ranks' shares are the epoch's (full-batch) order, each position exactly once
        used = order[: (len(order) // batch) * batch]
        assert torch.equal(torch.sort(torch.cat([torch.cat(p) for p in epoch_parts])).values, torch.sort(used).values)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist.init_from_env("cpu") == torch.device("cpu")
    assert not dist.is_distributed()
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum_(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.all_reduce_max_(t) is t
    dist.barrier()
    dist.cleanup()
    net = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(net, torch.device("cpu")) is net


def test_init_from_env_rejects_a_bad_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        dist.init_from_env("cpu")
