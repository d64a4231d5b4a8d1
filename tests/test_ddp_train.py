"""DDP training with two gloo processes on CPU, started by torchrun (``torch.distributed.run``).

Each torchrun launch costs a few seconds (two Python processes importing torch), so the runs are tiny.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longtail.data.batches import InMemoryBatches
from longtail.data.samplers import build_sampler
from longtail.engine import distributed as dist
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.run import evaluate_run
from gloo import free_port

# digits, ResNet-8, constant lr, no augmentation (cheaper; the equality test switches it back on)
TINY = ["data.name=digits", "data.imbalance=10", "model.backbone=resnet8", "model.width=8", "optim.lr=0.05",
        "optim.warmup_epochs=0", "optim.schedule=constant", "train.batch_size=64", "train.progress=false",
        "eval.batch_size=128", "device=cpu", "data.augment=none"]

# A training entry point for the tests, with switches set through the environment:
#   FREEZE_BN=1  BatchNorm layers stay in eval mode (fixed running statistics, learnable affine): per-rank
#                batch statistics differ from the global batch's, and SyncBatchNorm does not run on CPU;
#   POISON=r:k   on rank r the k-th loss (1-based, counted over the run) is NaN.
TRAIN_SCRIPT = textwrap.dedent("""
    import os
    import sys
    import torch
    from longtail import config as C
    from longtail.engine import distributed as dist
    from longtail.engine import run as R
    from longtail.errors import LongtailError

    if os.environ.get("FREEZE_BN") == "1":
        bn = torch.nn.modules.batchnorm._BatchNorm
        _bn_train = bn.train
        bn.train = lambda self, mode=True: _bn_train(self, False)
    if os.environ.get("POISON"):
        bad_rank, bad_call = map(int, os.environ["POISON"].split(":"))
        _create = R.create_method
        calls = [0]

        def create_method(cfg, counts):
            method = _create(cfg, counts)
            loss_fn = method.loss

            def loss(batch, output):
                value, parts = loss_fn(batch, output)
                calls[0] += 1
                if dist.rank() == bad_rank and calls[0] == bad_call:
                    value = value * float("nan")
                return value, parts

            method.loss = loss
            return method

        R.create_method = create_method
    torch.set_num_threads(1)
    cfg = C.Config()
    C.apply_overrides(cfg, sys.argv[2:])
    try:
        R.train(C.validate(cfg), out=sys.argv[1], echo=lambda *a: None)
    except LongtailError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
""")


def env(**extra: str) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FREEZE_BN", "POISON"):
        e.pop(k, None)
    e.update(extra)
    return e


def torchrun_cmd(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 120, check: bool = True,
             **extra_env: str) -> subprocess.CompletedProcess:
    r = subprocess.run(torchrun_cmd(args, nproc), env=env(**extra_env), capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _epoch_record(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.parametrize("method", ["ce", "bcl", "bbl", "proco"])
def test_ddp_equals_single_process_on_the_same_global_batch(tmp_path, method):
    """One epoch (8 global batches, the last one partial) on 1 and on 2 processes, with augmentation (the
    standard crop + flip view; for BCL/BBL also the two SimCLR views): the same losses, the same accuracy,
    and (through 8 SGD steps) the same gradients, so the same weights, BatchNorm affine parameters
    included. For BCL/BBL the contrastive loss sees the all-gathered global batch; BBL's R4 keeps a queue
    of class embeddings, which must evolve identically on every rank; ProCo all-reduces its class
    statistics, which must equal the single process's."""
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    over = TINY + [f"method.name={method}", "train.epochs=1", "train.eval_every=0", "optim.weight_decay=5e-4",
                   "data.augment=standard"]
    if method == "bbl":
        over.append("method.bbl_variant=r4")
    if method == "proco":
        over += ["method.proj_hidden=16", "method.proj_dim=32"]
    flags = dict(FREEZE_BN="1")
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), *over], env=env(**flags),
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun([str(script), str(tmp_path / "ddp"), *over], **flags)
    a, b = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert any("bn" in k and k.endswith("weight") for k in a)  # BatchNorm is there, in eval mode
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"{k} differs")
    ra, rb = _epoch_record(tmp_path / "single"), _epoch_record(tmp_path / "ddp")
    assert ra["step"] == rb["step"] == 8
    for k in ra:
        if k.startswith("loss") or k == "train_acc":
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), k
    if method in ("bbl", "proco"):
        sa = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["method"]
        sb = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["method"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-5, msg=f"{method} state {k} differs")
    sa = json.loads((tmp_path / "single" / "summary.json").read_text())
    sb = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert sb["num_test"] == sa["num_test"] == 500
    assert sb["top1"] == pytest.approx(sa["top1"], abs=0.21)  # at most one image flips on a near-tie


def test_ddp_cli_run_writes_one_run_dir_and_eval_agrees(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  name: digits\n")  # an empty config is an error; the overrides set the rest
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
    # evaluation on 2 processes: each rank takes half the test split, the statistics are summed
    r = torchrun(["-m", "longtail", "eval", str(out), "--json"])
    start = r.stdout.index("{")
    md = json.loads(r.stdout[start:])  # only rank 0 printed, so this is one JSON document
    assert md["num_samples"] == 500 and md["agrees_with_summary"] is True
    for k in ("top1", "many", "medium", "few", "ece"):
        assert md[k] == pytest.approx(s[k], abs=1e-6)
    assert md["per_class"] == pytest.approx(s["per_class"], abs=1e-6)


@pytest.mark.parametrize("world_size,k", [(2, 1), (3, 1), (2, 4), (4, 2)])
def test_class_balanced_shards_partition_each_epoch(world_size, k):
    """Every rank's batches (the real batch source, as each rank builds it) together are the sampler's
    epoch order: each global batch split without overlap, in order, with equal shares; only a tail
    that is not a multiple of the world size is trimmed. So the class-balanced draw is unchanged."""
    labels = np.repeat(np.arange(5), [40, 20, 10, 5, 3])
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    sampler = build_sampler("class_balanced", labels, seed=3, k=k)
    batch = 12
    for epoch in range(2):
        order = sampler.epoch_indices(epoch)
        per_rank = [list(InMemoryBatches(images, labels, views=[lambda x, g: x.float()], batch_size=batch,
                                         sampler=sampler, device="cpu", seed=0, rank=r,
                                         world_size=world_size).epoch(epoch)) for r in range(world_size)]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        gathered = []
        for step_batches in zip(*per_rank):
            sizes = {len(b.index) for b in step_batches}
            assert len(sizes) == 1  # equal shares
            gathered.append(torch.cat([b.index for b in step_batches]))
        got = torch.cat(gathered)
        full, tail = divmod(len(order), batch)
        expected = torch.cat([order[: full * batch], order[full * batch: full * batch + tail - tail % world_size]])
        assert torch.equal(got, expected)  # the epoch order itself, in order: the sampling semantics hold


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


def test_sync_bn_on_cpu_processes_is_a_clear_error_and_writes_nothing(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  name: digits\n")  # an empty config is an error; the overrides set the rest
    r = torchrun(["-m", "longtail", "train", "--config", str(cfg), "--out", str(tmp_path / "run"), *TINY,
                  "method.name=ce", "train.epochs=1", "train.sync_bn=true"], check=False)
    assert r.returncode != 0
    assert "train.sync_bn=true needs GPUs" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_nan_on_one_rank_stops_every_rank_and_keeps_the_last_good_checkpoint(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "run"
    # 8 steps per epoch: the 10th loss is epoch 2 (1-based), step 1; only rank 1 sees it
    r = torchrun([str(script), str(out), *TINY, "method.name=ce", "train.epochs=3", "train.eval_every=0"],
                 check=False, POISON="1:10")
    assert r.returncode != 0
    msg = "the loss became NaN or infinite at epoch 2 (1-based), step 1 of that epoch"
    assert r.stderr.count(msg) == 2, r.stderr[-3000:]  # rank 0 stopped too, at the same step
    assert "last good checkpoint is kept" in r.stderr
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "summary.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def _worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (Linux /proc)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            environ = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = int(d.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_all_ranks_with_a_checkpoint_and_resume_finishes(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  name: digits\n")  # an empty config is an error; the overrides set the rest
    out = tmp_path / "run"
    over = [*TINY, "method.name=ce", "train.epochs=300", "train.eval_every=0"]
    proc = subprocess.Popen(torchrun_cmd(["-m", "longtail", "train", "--config", str(cfg), "--out", str(out),
                                          *over]), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ckpt = out / "checkpoints" / "last.pt"
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), proc.communicate(timeout=30)[1][-3000:]
        workers = _worker_pids(proc.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGTERM)  # rank 0 never sees a signal: it must learn it from rank 1
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGTERM received: stopped after epoch" in err
    assert f"longtail train --resume {out}" in err
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    stopped_at = state["epoch"] + state["step_in_epoch"] / 8
    assert 1 <= stopped_at < 300
    assert not (out / "summary.json").exists()
    done = int(stopped_at) + 2
    torchrun(["-m", "longtail", "train", "--resume", str(out), f"train.epochs={done}"])
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, done + 1))  # every epoch logged once, none lost or repeated
    s = json.loads((out / "summary.json").read_text())
    assert s["epochs"] == done and s["completed_epochs"] == done and s["num_test"] == 500
