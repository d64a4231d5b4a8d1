"""Stacked seeds (train.seeds) under DDP: two gloo processes on CPU, started by torchrun, give each seed
what one process gives it (each rank holds its share of every model's batch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from longtail.engine.checkpoint import load_checkpoint
from test_ddp_train import TINY, TRAIN_SCRIPT, env, torchrun


@pytest.mark.parametrize("method", ["ce", "bbl"])
def test_stacked_ddp_equals_stacked_single_process(tmp_path, method):
    """Two seeds, one epoch with augmentation, BatchNorm frozen (per-rank batch statistics differ from the
    global batch's, as for one seed): weights, BBL's queues and the metrics of each seed agree with one
    process within the tolerance of the single-seed DDP test (the gradient all-reduce sums in another order)."""
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    over = TINY + [f"method.name={method}", "train.epochs=1", "train.eval_every=0", "data.augment=standard",
                   "train.seeds=[0,1]", "optim.grad_clip=1.0"]
    if method == "bbl":
        over += ["method.bbl_variant=r4", "model.head=cosine", "method.proj_hidden=16", "method.proj_dim=8"]
    flags = dict(FREEZE_BN="1")
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), *over], env=env(**flags),
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun([str(script), str(tmp_path / "ddp"), *over], timeout=240, **flags)
    for seed in (0, 1):
        name = f"digits_r10_{method}_s{seed}"
        a = load_file(str(tmp_path / "single" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "ddp" / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"seed {seed}: {k} differs")
        ca = load_checkpoint(tmp_path / "single" / name / "checkpoints" / "last.pt")
        cb = load_checkpoint(tmp_path / "ddp" / name / "checkpoints" / "last.pt")
        assert ca["global_step"] == cb["global_step"] == 8
        for k, v in ca["method"].items():
            torch.testing.assert_close(cb["method"][k], v, rtol=1e-5, atol=1e-5, msg=f"seed {seed}: {k} differs")
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [f"digits_r10_{method}_s{s}" for s in (0, 1)]
