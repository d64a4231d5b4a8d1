"""engine.distributed: single-process no-ops, and the METHODS.md §2.7 DDP invariant on two gloo processes.

The two-process run splits one fixed batch in halves. Each rank embeds its half, all-gathers the
embeddings (with gradient) and labels, computes BCL over its own anchors (``local_range``) against the
global contrast set, backpropagates, then averages parameter gradients as DDP does. That must equal the
single-process gradient on the whole batch. Gathering without gradient must not.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from longtail.engine import distributed as D
from longtail.losses.bcl import BCLLoss
from gloo import run_workers

WORLD, N, V, K = 2, 8, 2, 5
LABELS = torch.tensor([0, 1, 1, 3, 0, 3, 3, 1])  # classes 2 and 4 absent; both halves share classes


class Toy(nn.Module):
    """Backbone → projection → normalise; classifier rows W; prototype head q with BN over the C rows."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 8)
        self.proj = nn.Linear(8, 4)
        self.w = nn.Parameter(torch.randn(K, 8))
        # BN in train mode is fine here: q's input (W) is identical on every rank.
        self.q = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(torch.relu(self.backbone(x))), dim=-1)

    def prototypes(self) -> torch.Tensor:
        return F.normalize(self.q(self.w), dim=-1)


def build() -> tuple[Toy, torch.Tensor]:
    torch.manual_seed(0)
    model = Toy().double()
    x = torch.randn(N, V, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def param_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        model, x = build()
        n_local = N // WORLD
        x_local, y_local = x[rank * n_local:(rank + 1) * n_local], LABELS[rank * n_local:(rank + 1) * n_local]
        start, end = D.local_range(n_local)
        results = {"helpers": (D.is_distributed(), D.rank(), D.world_size(), D.is_main(), (start, end))}
        for mode in ("with_grad", "no_grad"):
            model.zero_grad(set_to_none=True)
            z = model.embed(x_local)
            if mode == "with_grad":
                z_all = D.all_gather_with_grad(z)
            else:  # the common shortcut: others' embeddings detached, this rank's slice keeps its graph
                gathered = D.all_gather_no_grad(z)
                z_all = torch.cat([gathered[:start], z, gathered[end:]])
            y_all = D.all_gather_no_grad(y_local)
            loss = BCLLoss(0.1)(z_all, y_all, model.prototypes(), local_range=(start, end))
            loss.backward()
            for p in model.parameters():  # what DDP does: average gradients over ranks
                dist.all_reduce(p.grad)
                p.grad /= WORLD
            results[mode] = param_grads(model)
            results[mode + "_gathered_labels"] = y_all
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path_factory.mktemp("ddp")
    return run_workers(_worker, out, WORLD)


def single_process_grads() -> dict[str, torch.Tensor]:
    model, x = build()
    BCLLoss(0.1)(model.embed(x), LABELS, model.prototypes()).backward()
    return param_grads(model)


def test_ddp_gradient_equals_single_process(two_rank_results):
    ref = single_process_grads()
    for res in two_rank_results:
        torch.testing.assert_close(res["with_grad_gathered_labels"], LABELS)
        assert res["with_grad"].keys() == ref.keys()
        for name, g in ref.items():
            assert g.abs().max() > 0, name  # every parameter, W and q included, gets a gradient
            torch.testing.assert_close(res["with_grad"][name], g, atol=1e-5, rtol=0, msg=name)


def test_gather_without_grad_changes_the_gradient(two_rank_results):
    # Other ranks' losses no longer reach this rank's encoder, so its gradient is missing those terms.
    # The prototype path does not cross the gather, so W and q still match.
    ref = single_process_grads()
    got = two_rank_results[0]["no_grad"]
    for name in ("backbone.weight", "proj.weight"):
        assert (got[name] - ref[name]).abs().max() > 1e-3, name
    torch.testing.assert_close(got["w"], ref["w"], atol=1e-5, rtol=0)


def test_helpers_inside_the_process_group(two_rank_results):
    assert two_rank_results[0]["helpers"] == (True, 0, 2, True, (0, 4))
    assert two_rank_results[1]["helpers"] == (True, 1, 2, False, (4, 8))


def test_single_process_helpers_are_no_ops():
    assert not D.is_distributed()
    assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
    assert D.local_range(5) == (0, 5)
    x = torch.randn(3, 2, requires_grad=True)
    assert D.all_gather_with_grad(x) is x
    y = D.all_gather_no_grad(x)
    assert not y.requires_grad and torch.equal(y, x.detach())


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_local_range_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="n_local must be a positive int"):
        D.local_range(bad)
