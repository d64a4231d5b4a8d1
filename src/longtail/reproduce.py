"""Reproduction suites: train every config × seed of ``configs/suites/<suite>.yaml``, then compare with targets.

A suite file holds ``entries``; each names a training config (relative to ``configs/``), optional
``overrides`` and an optional list of ``imbalance`` values (one run per value). Top-level ``overrides``
apply to every entry. Every run goes to ``out_dir/runs/<name>``. Re-running a suite skips finished runs
(``summary.json`` exists) and resumes interrupted ones from their checkpoint, so a suite can be stopped
and started again. A run that fails is retried (resumed from its checkpoint if it has one, else started
again) up to ``max_retries`` times; a run that still fails is listed as FAILED in ``RESULTS.md`` and makes
:func:`run_suite` raise once everything else has finished.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from longtail import config as C
from longtail.config.yamlio import read_yaml_file
from longtail.fileio import atomic_write_text
from longtail.errors import LongtailError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # shipped with the package
SUITES_DIR = CONFIGS_DIR / "suites"
ACCEPT_GAP = 1.0  # a CIFAR result passes at most this many points below its target
ACCEPT_SEEDS = 3

@dataclass(frozen=True)
class Target:
    """A number a suite's result is measured against.

    ``kind`` is ``"published"`` (a number someone else reported: ``source`` names where, and how far it was
    checked) or ``"goal"`` (a number we set ourselves, e.g. for BBL, which has no usable published number).
    A goal is never presented as a published number.
    """

    value: float
    kind: str  # published | goal
    source: str

    @property
    def label(self) -> str:
        """``published (source)`` or ``our goal (why)``: the table's reference column."""
        return f"published ({self.source})" if self.kind == "published" else f"our goal ({self.source})"


def _pub(value: float, source: str) -> Target:
    return Target(value, "published", source)


_LDAM = "arXiv 1906.07413"
_BBN = "arXiv 1912.02413, as cited"
_BCL = "arXiv 2207.09052"
_PROCO = "ProCo's official logs, best epoch"

#: CIFAR-10-LT ResNet-32 top-1 references (docs/targets.md §1), keyed by (dataset, method, rho). "confirmed":
#: confirmed by a secondary source; "unconfirmed": commonly cited, unchecked.
TARGETS: dict[tuple[str, str, float], Target] = {
    ("cifar10", "ce", 100.0): _pub(70.36, f"{_LDAM}, confirmed"),
    ("cifar10", "ce", 50.0): _pub(74.81, f"{_BBN}, confirmed"),
    ("cifar10", "ce", 10.0): _pub(86.39, f"{_LDAM}, unconfirmed"),
    ("cifar10", "ldam_drw", 100.0): _pub(77.03, f"{_LDAM}, confirmed"),
    ("cifar10", "ldam_drw", 50.0): _pub(81.03, f"{_BBN}, unconfirmed"),
    ("cifar10", "ldam_drw", 10.0): _pub(88.16, f"{_LDAM}, confirmed"),
    ("cifar10", "bcl", 100.0): _pub(84.32, f"{_BCL}, confirmed"),
    ("cifar10", "bcl", 50.0): _pub(87.24, f"{_BCL}, confirmed"),
    ("cifar10", "bcl", 10.0): _pub(91.12, f"{_BCL}, confirmed"),
    ("cifar10", "la", 100.0): _pub(77.7, "arXiv 2007.07314, unconfirmed"),
    ("cifar10", "proco", 100.0): _pub(85.9, _PROCO),
    ("cifar10", "proco", 50.0): _pub(88.2, _PROCO),
    ("cifar10", "proco", 10.0): _pub(91.9, _PROCO),
    # BBL has no published number we can use (only its abstract is public; ours is a reconstruction)
    ("cifar10", "bbl", 100.0): Target(86.0, "goal", "BBL has no usable published number"),
}
TARGET_BACKBONE = "resnet32"
TARGET_EPOCHS = 200


@dataclass
class Job:
    name: str
    cfg: C.Config
    run_dir: Path
    status: str = "pending"  # pending | done | skipped | FAILED
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(suite: str) -> Path:
    """``configs/suites/<suite>.yaml``, or ``suite`` itself when it is a YAML file."""
    p = Path(suite)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = SUITES_DIR / f"{suite}.yaml"
    if not q.is_file():
        raise LongtailError(f"unknown suite '{suite}'; available suites: {', '.join(list_suites()) or 'none'} "
                            f"(or pass the path of a suite YAML file)")
    return q


def _entry_error(path: Path, i: int, msg: str) -> LongtailError:
    return LongtailError(f"{path}: entry {i + 1}: {msg}")


def load_suite(suite: str, seeds: Sequence[int], overrides: Optional[Sequence[str]], out_dir: Path,
               device: str) -> list[Job]:
    """Expand a suite into one job per config × imbalance × seed (configs are validated here, before any run)."""
    path = suite_path(suite)
    data = read_yaml_file(path, "suite file")  # strict: a key given twice is an error
    if data is None:
        raise LongtailError(f"{path} is empty: a suite needs a non-empty 'entries' list of {{config, overrides, "
                            f"imbalance}}")
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise LongtailError(f"{path}: a suite needs a non-empty 'entries' list of {{config, overrides, imbalance}}")
    if not seeds:
        raise LongtailError("run_suite needs at least one seed, e.g. seeds=(0, 1, 2)")
    common = [str(o) for o in data.get("overrides", [])] + [str(o) for o in (overrides or [])]
    jobs: list[Job] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "config" not in e:
            raise _entry_error(path, i, "needs a 'config' key (a path relative to configs/)")
        cfg_path = CONFIGS_DIR / e["config"]
        if not cfg_path.is_file():
            raise _entry_error(path, i, f"config {cfg_path} not found")
        imbalances = e.get("imbalance", [None])
        imbalances = imbalances if isinstance(imbalances, list) else [imbalances]
        for rho in imbalances:
            for seed in seeds:
                ov = [str(o) for o in e.get("overrides", [])] + common + [f"train.seed={int(seed)}", f"device={device}"]
                if rho is not None:
                    ov.append(f"data.imbalance={rho}")
                cfg = C.load(cfg_path, ov)
                cfg.name = None  # one name per config × imbalance × seed, never the config's fixed name
                base = C.run_name(cfg)
                name = f"{e['name']}_{base}" if e.get("name") else base
                jobs.append(Job(name, cfg, out_dir / "runs" / name))
    names = [j.name for j in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LongtailError(f"{path}: two entries give the same run {dup[0]}; give them distinct 'name' keys")
    return jobs


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.pt").is_file()


def _finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def _prepare(job: Job, echo) -> Optional[str]:
    """'resume' if the run has a checkpoint, None for a fresh start (a partial folder without one is cleared)."""
    if _has_checkpoint(job.run_dir):
        return "resume"
    if job.run_dir.exists():  # started but died before its first checkpoint: nothing worth keeping
        echo(f"{job.name}: no checkpoint in {job.run_dir}; starting it again")
        shutil.rmtree(job.run_dir)
    return None


def _stacked_groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs grouped by configuration (everything but the seed), in order of first appearance."""
    from longtail.engine.stacked import _identity

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(repr(sorted(_identity(job.cfg).items())), []).append(job)
    return list(groups.values())


def _run_stacked(group: list[Job], echo) -> None:
    """Train a configuration's seeds together as one stacked network (``train.seeds``) when they can be:
    all fresh, or all checkpointed at the same step. Whatever is left pending (a configuration that cannot
    be stacked, a mixed state, a failure) is then run one seed at a time by the caller."""
    from longtail.engine.stacked import train_runs
    from longtail.errors import ConfigError

    states = [_prepare(job, echo) for job in group]
    if len(set(states)) != 1:
        echo(f"{', '.join(j.name for j in group)}: some have checkpoints and some not; training them one by one")
        return
    names = ", ".join(j.name for j in group)
    try:
        echo(f"{names}: {'resuming' if states[0] == 'resume' else 'training'} the {len(group)} seeds together")
        train_runs([j.cfg for j in group], [j.run_dir for j in group], resume=states[0] == "resume", echo=echo,
                   command="longtail reproduce")
    except ConfigError as e:  # not stackable (e.g. the backbone): the ordinary path, unchanged
        echo(f"{names}: cannot be trained together ({e}); training them one by one")
        return
    except Exception as e:  # noqa: BLE001 - the seeds are retried one by one, from their checkpoints
        for job in group:
            job.attempts += 1
            job.errors.append(f"{type(e).__name__}: {e}")
        echo(f"{names}: the stacked attempt failed: {type(e).__name__}: {e}; retrying them one by one")
        return
    for job in group:
        job.attempts += 1
        job.status = "done"


def _run_serial(jobs: list[Job], max_retries: int, echo, stack: bool = False) -> None:
    from longtail.engine.run import train

    if stack:
        for group in _stacked_groups(jobs):
            if len(group) > 1:
                _run_stacked(group, echo)
    for job in jobs:
        if job.status == "pending" and job.attempts > max_retries:
            job.status = "FAILED"
        while job.status == "pending":
            mode = _prepare(job, echo)
            job.attempts += 1
            try:
                if mode == "resume":
                    echo(f"{job.name}: resuming from {job.run_dir / 'checkpoints' / 'last.pt'}")
                    train(job.cfg, resume=str(job.run_dir), echo=echo, command="longtail reproduce")
                else:
                    train(job.cfg, out=str(job.run_dir), echo=echo, command="longtail reproduce")
                job.status = "done"
            except Exception as e:  # noqa: BLE001 - one run's failure must not stop the suite
                job.errors.append(f"{type(e).__name__}: {e}")
                echo(f"{job.name}: attempt {job.attempts} failed: {type(e).__name__}: {e}")
                if job.attempts > max_retries:
                    job.status = "FAILED"


def _command(job: Job, cfg_file: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "longtail", "train"]
    if resume:
        return base + ["--resume", str(job.run_dir), "--config", str(cfg_file)]
    return base + ["--config", str(cfg_file), "--out", str(job.run_dir)]


def _run_parallel(jobs: list[Job], parallel: int, max_retries: int, out_dir: Path, echo) -> None:
    """Up to ``parallel`` ``python -m longtail train`` subprocesses at once (one GPU shared by all)."""
    cfg_dir = out_dir / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    queue = list(jobs)
    running: list[tuple[Job, subprocess.Popen, object]] = []
    while queue or running:
        while queue and len(running) < parallel:
            job = queue.pop(0)
            resume = _prepare(job, echo) == "resume"
            cfg_file = cfg_dir / f"{job.name}.yaml"
            cfg_file.write_text(C.dump(job.cfg))
            job.attempts += 1
            log = open(out_dir / "logs" / f"{job.name}.attempt{job.attempts}.log", "w")
            echo(f"{job.name}: {'resuming' if resume else 'starting'} (attempt {job.attempts}), log {log.name}")
            running.append((job, subprocess.Popen(_command(job, cfg_file, resume), stdout=log,
                                                  stderr=subprocess.STDOUT), log))
        time.sleep(0.5)
        for item in list(running):
            job, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode == 0 and _finished(job.run_dir):
                job.status = "done"
                continue
            job.errors.append(f"exit status {proc.returncode} (log: {log.name})")
            echo(f"{job.name}: attempt {job.attempts} failed with exit status {proc.returncode}")
            if job.attempts > max_retries:
                job.status = "FAILED"
            else:
                queue.append(job)


def run_suite(suite: str, out_dir, *, seeds: Sequence[int] = (0,), parallel: int = 1,
              overrides: Optional[Sequence[str]] = None, device: str = "auto", echo: Callable = print,
              max_retries: int = 1, stack: bool = True) -> Path:
    """Train a suite (skipping finished runs), then write ``out_dir/RESULTS.md`` and return its path.

    Args:
        suite: a suite name (``configs/suites/<suite>.yaml``) or the path of a suite YAML file.
        out_dir: the suite folder; runs go to ``out_dir/runs/<name>``.
        seeds: training seeds; every config runs once per seed.
        parallel: concurrent runs as subprocesses; only with CUDA (forced to 1 on CPU, with a message).
        overrides: ``key=value`` overrides applied to every run (after the suite's own).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        echo: where progress lines go.
        max_retries: extra attempts for a run that fails (resumed from its checkpoint if it has one).
        stack: train the seeds of each configuration together as one stacked network (``train.seeds``; one
            process, one set of kernel launches for all seeds) when ``parallel`` is 1; configurations that
            cannot be stacked, and seeds whose stacked attempt failed, run one at a time.

    Raises:
        LongtailError: an unknown suite or bad suite file (before anything runs), or, after RESULTS.md
            is written, any run that still failed after its retries (all of them named).
    """
    import torch

    if parallel < 1 or max_retries < 0:
        raise LongtailError(f"run_suite needs parallel >= 1 and max_retries >= 0; got parallel={parallel}, "
                            f"max_retries={max_retries}")
    out = Path(out_dir)
    jobs = load_suite(suite, seeds, overrides, out, device)
    for job in jobs:
        if _finished(job.run_dir):
            job.status = "skipped"
            echo(f"{job.name}: finished earlier, skipped")
    todo = [j for j in jobs if j.status == "pending"]
    cuda = device != "cpu" and torch.cuda.is_available()
    if parallel > 1 and not cuda:
        echo(f"parallel={parallel} needs a CUDA GPU; running one run at a time on the CPU")
        parallel = 1
    (out / "runs").mkdir(parents=True, exist_ok=True)
    echo(f"suite {suite}: {len(jobs)} runs, {len(todo)} to train -> {out}")
    if parallel > 1:
        (out / "logs").mkdir(exist_ok=True)
        _run_parallel(todo, parallel, max_retries, out, echo)
    else:
        _run_serial(todo, max_retries, echo, stack=stack)
    results = write_results(out, suite, jobs, seeds)
    failed = [j for j in jobs if j.status == "FAILED"]
    if failed:
        raise LongtailError(f"{len(failed)} of {len(jobs)} runs failed after {max_retries} retr"
                            f"{'y' if max_retries == 1 else 'ies'}: "
                            + "; ".join(f"{j.name} ({j.errors[-1]})" for j in failed)
                            + f". See {results}; re-run the suite to retry them (finished runs are skipped).")
    echo(f"results: {results}")
    return results


# ---------------------------------------------------------------------------------------------------- results

def target_for(summary: dict) -> Optional[Target]:
    """The :class:`Target` (published number or our goal) of a run's dataset/method/imbalance on ResNet-32,
    or None."""
    if summary.get("backbone") != TARGET_BACKBONE:
        return None
    try:
        rho = float(summary.get("imbalance"))
    except (TypeError, ValueError):
        return None
    return TARGETS.get((summary.get("dataset"), summary.get("method"), rho))


def _groups(run_dirs: list[Path]) -> list[list[dict]]:
    from longtail.report.compare import config_identity
    from longtail.report.report import load_summary

    groups: dict[tuple, list[dict]] = {}
    for d in run_dirs:
        s = load_summary(d)
        groups.setdefault(config_identity(s), []).append(s)
    return list(groups.values())


def _targets_table(groups: list[list[dict]]) -> tuple[str, list[tuple[str, float, Optional[float]]], list[str]]:
    from longtail.report.report import fmt_imbalance, method_label

    lines = ["| dataset | ρ | method | seeds | epochs | ours top-1 | reference | reference is | gap | verdict |",
             "|" + " --- |" * 10]
    bars, notes = [], []
    for runs in groups:
        s0 = runs[0]
        tops = np.array([float(s["top1"]) for s in runs if isinstance(s.get("top1"), (int, float))])
        mean = float(tops.mean()) if tops.size else math.nan
        std = f"{tops.std(ddof=1):.2f}" if tops.size > 1 else "—"
        short = any(float(s.get("completed_epochs", s.get("epochs", 0))) < float(s.get("epochs", 0)) for s in runs)
        label = f"{method_label(s0.get('method'))} ρ={fmt_imbalance(s0.get('imbalance'))}"
        t = target_for(s0)
        if t is None:
            cells = ["—", "—", "—", "no target"]
        else:
            gap = mean - t.value
            ok = gap >= -ACCEPT_GAP
            full = len(runs) >= ACCEPT_SEEDS and not short and s0.get("epochs") == TARGET_EPOCHS
            verdict = ("pass" if ok else "FAIL") if full else ("on track" if ok else "below") + " (provisional)"
            cells = [f"{t.value:.2f}", t.label, f"{gap:+.2f}", verdict]
        lines.append("| " + " | ".join([str(s0.get("dataset")), fmt_imbalance(s0.get("imbalance")),
                                         method_label(s0.get("method")), str(len(runs)), str(s0.get("epochs")),
                                         f"{mean:.2f} ± {std}"] + cells) + " |")
        bars.append((label, mean, t))
        if len(runs) < ACCEPT_SEEDS:
            notes.append(f"{label}: {len(runs)} seed{'s' if len(runs) != 1 else ''} (the rule needs {ACCEPT_SEEDS})")
        if short or (t is not None and s0.get("epochs") != TARGET_EPOCHS):
            notes.append(f"{label}: shortened schedule ({s0.get('epochs')} epochs"
                         f"{', stopped early by train.max_steps' if short else ''}; targets use {TARGET_EPOCHS})")
    return "\n".join(lines) + "\n", bars, notes


def plot_targets(bars: list[tuple[str, float, Optional[Target]]], path: Path) -> Path:
    """Bar plot of our mean top-1 per method; a published number is a black tick, our own goal an orange
    dashed one, so the two are never confused."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.9 * len(bars) + 1.5), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(bars))
    ax.bar(x, [b[1] for b in bars], color="tab:blue", label="ours (mean top-1, last epoch)")
    for kind, style, name in (("published", dict(color="black", linestyles="solid"), "published number"),
                              ("goal", dict(color="tab:orange", linestyles="dashed"), "our goal (not published)")):
        idx = [i for i, b in enumerate(bars) if b[2] is not None and b[2].kind == kind]
        if idx:
            ax.hlines([bars[i][2].value for i in idx], [i - 0.4 for i in idx], [i + 0.4 for i in idx],
                      linewidths=2.5, label=name, zorder=3, **style)
    ax.set_xticks(x)
    ax.set_xticklabels([b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=200)
    return path


def write_results(out: Path, suite: str, jobs: list[Job], seeds: Sequence[int]) -> Path:
    """Write ``out/RESULTS.md`` (+ ``results_top1.png``) from the finished runs; FAILED runs are listed."""
    from longtail.report.compare import compare_runs

    done = [j.run_dir for j in jobs if j.status in ("done", "skipped") and _finished(j.run_dir)]
    failed = [j for j in jobs if j.status == "FAILED"]
    parts = [f"# Reproduction suite `{suite}`", "",
             f"{len(done)} of {len(jobs)} runs finished; seeds {', '.join(str(s) for s in seeds)}. "
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')}.", ""]
    if failed:
        parts += ["## FAILED runs", "", "| run | attempts | last error |", "| --- | --- | --- |"]
        parts += [f"| {j.name} | {j.attempts} | {j.errors[-1].splitlines()[0] if j.errors else '?'} |"
                  for j in failed]
        parts.append("")
    if done:
        groups = _groups(done)
        table, bars, notes = _targets_table(groups)
        plot_targets(bars, out / "results_top1.png")
        parts += ["## All runs (mean ± std over seeds)", "", compare_runs(done),
                  "## Against published numbers and our own goals", "",
                  f"Acceptance rule: at most {ACCEPT_GAP:.1f} point below the reference on CIFAR, "
                  f"{ACCEPT_SEEDS}-seed mean, last epoch. gap = ours − reference. A published reference names "
                  f"its source and how far it was checked (confirmed: by a secondary source; unconfirmed: "
                  f"commonly cited, unchecked); see docs/targets.md. An \"our goal\" reference is a number we set "
                  f"ourselves (BBL has none published): it is not a published result. Published values are "
                  f"mostly best-epoch values; ours are last-epoch.", "", table]
        if notes:
            parts += ["**Not a full reproduction:**", ""] + [f"- {n}" for n in notes] + [""]
        parts += ["![top-1 per method vs published numbers and our goals](results_top1.png)", ""]
    return atomic_write_text(out / "RESULTS.md", "\n".join(parts))
