"""Reproduction suites: every run trained, mean ± std aggregated, failures retried, reported and raised."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import longtail.engine.run as run_mod
from longtail import config as C
from longtail.errors import LongtailError
from longtail.reproduce import TARGETS, Target, load_suite, run_suite, target_for

SMOKE_NAMES = [f"digits_r10_{m}_s{s}" for m in ("ce", "la", "bcl", "bbl") for s in (0, 1)]
TINY = ["model.backbone=resnet8", "model.width=8", "train.epochs=2", "train.batch_size=64",
        "optim.warmup_epochs=0", "optim.schedule=constant", "train.eval_every=1", "train.progress=false"]


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    run_suite("smoke", out, seeds=(0, 1), device="cpu", echo=quiet)
    return out


def tiny_suite(tmp_path: Path, methods=("ce",)) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({"overrides": TINY, "entries": [
        {"config": "quickstart.yaml", "overrides": [f"method.name={m}"]} for m in methods]}))
    return p


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_smoke_suite_writes_all_runs_and_results(smoke):
    assert sorted(p.name for p in (smoke / "runs").iterdir()) == sorted(SMOKE_NAMES)
    for name in SMOKE_NAMES:
        assert (smoke / "runs" / name / "summary.json").is_file(), name
    text = (smoke / "RESULTS.md").read_text()
    assert (smoke / "results_top1.png").stat().st_size > 1000
    assert "FAILED" not in text and "at most 1.0 point below" in text
    assert "2 seeds (the rule needs 3)" in text and "shortened schedule" in text
    # the mean ± std of each method over its two seeds, computed here from the summaries
    for m in ("ce", "la"):
        tops = [summary(smoke / "runs" / f"digits_r10_{m}_s{s}")["top1"] for s in (0, 1)]
        cell = f"{np.mean(tops):.2f} ± {np.std(tops, ddof=1):.2f}"
        row = next(l for l in text.splitlines() if l.startswith(f"| digits ρ=10 · {m} ·"))
        assert f"| 2 | {cell} |" in row, (row, cell)


def test_rerun_skips_finished_runs(smoke, monkeypatch):
    calls = []
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: calls.append(k))
    lines = []
    run_suite("smoke", smoke, seeds=(0, 1), device="cpu", echo=lines.append)
    assert calls == []
    assert sum("skipped" in l for l in lines) == len(SMOKE_NAMES)
    assert (smoke / "RESULTS.md").is_file()


def test_failed_run_resumes_from_checkpoint(tmp_path, monkeypatch):
    real = run_mod.train
    calls = []

    def flaky(cfg, **kw):
        calls.append(kw)
        if len(calls) == 1:  # train one of two epochs, keep its checkpoint, then "die"
            cfg.train.max_steps = 4
            real(cfg, **kw)
            cfg.train.max_steps = None
            for f in ("summary.json", "model.safetensors"):
                (Path(kw["out"]) / f).unlink()
            raise RuntimeError("simulated crash")
        return real(cfg, **kw)

    monkeypatch.setattr(run_mod, "train", flaky)
    run_suite(tiny_suite(tmp_path), tmp_path / "out", device="cpu", echo=quiet)
    run_dir = tmp_path / "out" / "runs" / "digits_r10_ce_s0"
    assert "out" in calls[0] and calls[1].get("resume") == str(run_dir) and len(calls) == 2
    s = summary(run_dir)
    assert s["epochs"] == 2 and s["steps"] > 4  # continued past the crash to the full schedule


def test_failed_run_without_checkpoint_restarts(tmp_path, monkeypatch):
    real = run_mod.train
    calls = []

    def flaky(cfg, **kw):
        calls.append(kw)
        if len(calls) == 1:
            Path(kw["out"]).mkdir(parents=True)
            (Path(kw["out"]) / "partial.txt").write_text("half-written")
            raise RuntimeError("died before the first checkpoint")
        return real(cfg, **kw)

    monkeypatch.setattr(run_mod, "train", flaky)
    run_suite(tiny_suite(tmp_path), tmp_path / "out", device="cpu", echo=quiet)
    run_dir = tmp_path / "out" / "runs" / "digits_r10_ce_s0"
    assert [("out" in c) for c in calls] == [True, True]
    assert (run_dir / "summary.json").is_file() and not (run_dir / "partial.txt").exists()


def test_always_failing_run_is_reported_and_raises(tmp_path, monkeypatch):
    real = run_mod.train
    la_calls = []

    def broken_la(cfg, **kw):
        if cfg.method.name == "la":
            la_calls.append(kw)
            raise RuntimeError("la is broken")
        return real(cfg, **kw)

    monkeypatch.setattr(run_mod, "train", broken_la)
    out = tmp_path / "out"
    with pytest.raises(LongtailError, match=r"1 of 2 runs failed.*digits_r10_la_s0.*la is broken"):
        run_suite(tiny_suite(tmp_path, ("la", "ce")), out, device="cpu", echo=quiet, max_retries=2)
    assert len(la_calls) == 3  # first attempt + 2 retries
    assert (out / "runs" / "digits_r10_ce_s0" / "summary.json").is_file()  # the other run still ran (after la)
    text = (out / "RESULTS.md").read_text()
    assert re.search(r"\| digits_r10_la_s0 \| 3 \| RuntimeError: la is broken \|", text)
    assert "digits ρ=10 · ce ·" in text and "1 of 2 runs finished" in text


def test_unknown_suite_lists_suites(tmp_path):
    with pytest.raises(LongtailError, match="unknown suite 'nope'.*cifar10_lt, cifar10_lt_contrastive, cifar10_lt_r100, smoke, tinyimagenet_lt"):
        run_suite("nope", tmp_path, device="cpu", echo=quiet)


@pytest.mark.parametrize("data,msg", [
    ({"entries": []}, "non-empty 'entries'"),
    ({"entries": [{"overrides": []}]}, "entry 1: needs a 'config'"),
    ({"entries": [{"config": "missing/x.yaml"}]}, "entry 1: config .* not found"),
    ({"entries": [{"config": "quickstart.yaml"}, {"config": "quickstart.yaml"}]}, "same run digits_r10_la_s0"),
])
def test_bad_suite_files(tmp_path, data, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(LongtailError, match=msg):
        run_suite(str(p), tmp_path / "out", device="cpu", echo=quiet)
    assert not (tmp_path / "out").exists()  # nothing written before the suite is known to be valid


def test_bad_arguments(tmp_path):
    with pytest.raises(LongtailError, match="at least one seed"):
        run_suite("smoke", tmp_path, seeds=(), device="cpu", echo=quiet)
    with pytest.raises(LongtailError, match="parallel >= 1"):
        run_suite("smoke", tmp_path, parallel=0, device="cpu", echo=quiet)


def test_shipped_suites_expand():
    jobs = load_suite("cifar10_lt", (0, 1, 2), None, Path("/tmp/x"), "cpu")
    assert len(jobs) == 6 * 3 * 3
    assert {(j.cfg.method.name, j.cfg.data.imbalance) for j in jobs} == {
        (m, r) for m in ("ce", "la", "ldam_drw", "bcl", "proco", "bbl") for r in (100.0, 50.0, 10.0)}
    assert all(j.cfg.data.name == "cifar10" and j.cfg.model.backbone == "resnet32" for j in jobs)
    # the GPU-priority subsets are exactly the matching runs of cifar10_lt
    full = {j.name: j.cfg for j in jobs}
    for sub, keep in (("cifar10_lt_r100", lambda c: c.data.imbalance == 100),
                      ("cifar10_lt_contrastive", lambda c: c.method.name in ("bcl", "proco", "bbl") and c.data.imbalance < 100)):
        part = load_suite(sub, (0, 1, 2), None, Path("/tmp/x"), "cpu")
        assert sorted(j.name for j in part) == sorted(n for n, c in full.items() if keep(c))
        assert all(C.to_dict(j.cfg) == C.to_dict(full[j.name]) for j in part)
    tiny = load_suite("tinyimagenet_lt", (0,), None, Path("/tmp/x"), "cpu")
    assert {(j.cfg.method.name, j.cfg.data.imbalance) for j in tiny} == {
        (m, r) for m in ("ce", "la", "ldam_drw", "bcl", "bbl") for r in (100.0, 10.0)}


def test_targets_lookup():
    s = {"dataset": "cifar10", "method": "bcl", "imbalance": 100, "backbone": "resnet32"}
    assert target_for(s) == Target(84.32, "published", "arXiv 2207.09052, confirmed")
    assert target_for(dict(s, backbone="resnet8")) is None
    assert target_for(dict(s, method="la", imbalance=10)) is None  # LA is published at rho = 100 only
    assert target_for(dict(s, method="ldam_drw", imbalance=50.0)).value == 81.03
    assert "unconfirmed" in target_for(dict(s, method="ldam_drw", imbalance=50.0)).source
    assert target_for(dict(s, method="proco")).value == 85.9


def test_published_numbers_and_our_goals_are_labelled_apart():
    """Every reference is either a published number naming its source or our own goal; a goal is labelled
    as ours, and no label calls anything 'paper'."""
    kinds = {k: t.kind for k, t in TARGETS.items()}
    assert set(kinds.values()) == {"published", "goal"}
    assert [k for k, v in kinds.items() if v == "goal"] == [("cifar10", "bbl", 100.0)]
    for t in TARGETS.values():
        assert "paper" not in t.label.lower()
        if t.kind == "published":
            assert t.label.startswith("published (") and ("arXiv" in t.source or "official" in t.source)
        else:
            assert t.label.startswith("our goal (")


def test_targets_table_gap_and_verdict():
    from longtail.reproduce import _targets_table

    def run(top1, seed, epochs=200, done=200, method="bcl"):
        return {"dataset": "cifar10", "method": method, "imbalance": 100, "backbone": "resnet32", "seed": seed,
                "top1": top1, "epochs": epochs, "completed_epochs": done}

    full = [run(83.5, 0), run(83.4, 1), run(83.6, 2)]  # mean 83.5, 0.82 below 84.32: passes
    low = [dict(r, imbalance=10) for r in full]  # 7.62 below 91.12: fails
    short = [run(83.5, 0, epochs=20, done=20)]
    bbl = [run(86.5, s, method="bbl") for s in range(3)]
    table, bars, notes = _targets_table([full, low, short, bbl])
    pub = "published (arXiv 2207.09052, confirmed)"
    rows = table.splitlines()[2:]
    assert rows[0].endswith(f"| 83.50 ± 0.10 | 84.32 | {pub} | -0.82 | pass |")
    assert rows[1].endswith(f"| 91.12 | {pub} | -7.62 | FAIL |")
    assert rows[2].endswith(f"| 83.50 ± — | 84.32 | {pub} | -0.82 | on track (provisional) |")
    assert rows[3].endswith("| 86.00 | our goal (BBL has no usable published number) | +0.50 | pass |")
    assert bars[0][:2] == ("bcl ρ=100", pytest.approx(83.5)) and bars[0][2].value == 84.32
    assert bars[3][2].kind == "goal"
    assert any("1 seed (the rule needs 3)" in n for n in notes)
    assert any("shortened schedule (20 epochs" in n for n in notes)
    assert len(notes) == 2  # both from the short one-seed group; the full 3-seed groups need none


def test_parallel_runner_uses_subprocesses(tmp_path):
    # run_suite only takes this path with CUDA; here the runner itself is driven on CPU with two jobs at once
    from longtail.reproduce import _run_parallel

    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    jobs = load_suite(str(tiny_suite(tmp_path, ("ce", "la"))), (0,), ["train.epochs=1"], out, "cpu")
    _run_parallel(jobs, 2, 0, out, quiet)
    assert [j.status for j in jobs] == ["done", "done"]
    for j in jobs:
        s = summary(j.run_dir)
        assert s["method"] == j.cfg.method.name and s["epochs"] == 1
        assert (out / "logs" / f"{j.name}.attempt1.log").is_file()


def test_the_configs_ship_with_the_package():
    """reproduce reads its suites and configs from the package, so a plain (non-editable) install has them:
    every YAML file under it is covered by the package-data globs of pyproject.toml."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    import longtail
    from longtail.reproduce import CONFIGS_DIR

    pkg = Path(longtail.__file__).resolve().parent
    assert CONFIGS_DIR.resolve().parent == pkg and (CONFIGS_DIR / "suites").is_dir()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["longtail"]
    files = [p.relative_to(pkg).as_posix() for p in CONFIGS_DIR.rglob("*.yaml")]
    assert len(files) > 30
    assert all(any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in files)
