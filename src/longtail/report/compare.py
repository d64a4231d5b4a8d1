"""Multi-seed comparison table (docs/protocol.md §5: mean ± sample standard deviation, per-seed values).

Runs are grouped by their configuration identity, which is every tag of the summary except the seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from longtail.errors import LongtailError
from longtail.report.report import PathLike, _cell, fmt, fmt_imbalance, load_summary, method_label

#: Summary tags that identify a configuration; runs equal on all of them are seeds of one config.
IDENTITY = ("dataset", "imbalance", "method", "backbone", "epochs", "batch_size", "augment", "selection",
            "posthoc_tau")
METRICS = (("top1", "top-1"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("ece", "ECE"))


def _norm(key: str, value: Any) -> Any:
    # 100 and 100.0 are the same imbalance; a summary without posthoc_tau applied none.
    if key == "posthoc_tau" and value is None:
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("imbalance", "posthoc_tau"):
        return float(value)
    return value


def config_identity(summary: dict[str, Any]) -> tuple:
    """The tuple of identity tags (seed excluded) of one run's summary."""
    return tuple(_norm(k, summary.get(k)) for k in IDENTITY)


def config_label(summary: dict[str, Any]) -> str:
    """A short human label, e.g. ``cifar10 ρ=100 · ce · resnet32 · 200 ep · bs 128 · standard · last``."""
    s = summary
    parts = [
        f"{s.get('dataset', '?')} ρ={fmt_imbalance(s.get('imbalance', '?'))}",
        method_label(s.get("method", "?")),
        str(s.get("backbone", "?")),
        f"{s.get('epochs', '?')} ep",
        f"bs {s.get('batch_size', '?')}",
        str(s.get("augment", "?")),
        str(s.get("selection", "?")),
    ]
    tau = _norm("posthoc_tau", s.get("posthoc_tau"))
    if tau:
        parts.append(f"τ={tau:g}")
    return " · ".join(parts)


def mean_std(values: Sequence[Optional[float]]) -> str:
    """``"mean ± std"`` with the sample std (n − 1); ``"mean ± —"`` for one value; "—" for none.

    Missing values (None, e.g. an empty shot group) are left out; if some but not all are missing, the
    cell says how many values it averages.
    """
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return "—"
    arr = np.asarray(vals)
    std = f"{arr.std(ddof=1):.2f}" if arr.size > 1 else "—"
    note = f" ({arr.size} of {len(values)})" if arr.size < len(values) else ""
    return f"{arr.mean():.2f} ± {std}{note}"


def _seed_name(seed: Any) -> str:
    return f"s{seed}" if seed is not None else "s?"


def _seed_order(seed: Any) -> tuple:
    is_int = isinstance(seed, int) and not isinstance(seed, bool)
    return (not is_int, seed if is_int else 0, str(seed))


def compare_runs(run_dirs: Sequence[PathLike]) -> str:
    """A markdown table with one row per configuration over its seeds.

    Columns: config, seeds, top-1, Many, Medium, Few, ECE (each mean ± sample std), per-seed top-1.

    Raises:
        LongtailError: no runs, a run that is missing or unfinished (named), or two runs of the same
            configuration with the same seed.
    """
    if not run_dirs:
        raise LongtailError("compare needs at least one run folder, e.g. runs/cifar10_r100_ce_s0 runs/..._s1")
    groups: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for d in run_dirs:
        d = Path(d)
        summary = load_summary(d)
        runs = groups.setdefault(config_identity(summary), [])
        for other, s in runs:
            if s.get("seed") == summary.get("seed"):
                raise LongtailError(
                    f"runs {other} and {d} have the same configuration and seed {summary.get('seed')}; "
                    "pass each seed of a configuration once"
                )
        runs.append((d, summary))

    head = ["config", "seeds"] + [label for _, label in METRICS] + ["top-1 per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    commits: set[str] = set()
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: _seed_order(r[1].get("seed")))
        summaries = [s for _, s in runs]
        commits.update(str(s["commit"]) for s in summaries if s.get("commit"))
        cells = [_cell(config_label(summaries[0])), str(len(summaries))]
        cells += [mean_std([s.get(key) for s in summaries]) for key, _ in METRICS]
        cells.append(", ".join(f"{_seed_name(s.get('seed'))}: {fmt(s.get('top1'))}" for s in summaries))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percent; mean ± sample standard deviation (n − 1) over training seeds; — = no value "
                  "(an empty shot group, or a single seed's std)."]
    if commits:
        lines.append("Toolbox commit" + ("s" if len(commits) > 1 else "") + ": " + ", ".join(sorted(commits)) + ".")
    return "\n".join(lines) + "\n"
