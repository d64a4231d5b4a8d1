"""Multi-seed comparison (docs/protocol.md §5: mean ± sample standard deviation, per-seed values).

Runs are grouped by their whole configuration except the seed (:mod:`longtail.report.identity`); each
group is one row, and the settings that differ between groups are listed. Formats: markdown, CSV, JSON;
:func:`write_comparison` also draws the groups' figure (:mod:`longtail.report.compare_plot`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from longtail.errors import LongtailError
from longtail.fileio import atomic_write_text, refuse_overwrite
from longtail.report.common import PathLike, cell, fmt, number
from longtail.report.identity import ABSENT, Comparison, Group, describe, group_runs, optional_seed, show, tag_identity

METRICS = (("top1", "top-1"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("ece", "ECE"))
FORMATS = ("markdown", "csv", "json")
config_label = describe  # the description of a summary, as before


def config_identity(summary: dict[str, Any]) -> tuple:
    """The identity of a run known by its summary alone (tags, kind, shot rule, length; seed excluded)."""
    return tag_identity(summary)


def stats(values: Sequence[Optional[float]]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the finite values: std is the sample std (n − 1), None below two values."""
    vals = np.asarray([float(v) for v in values if number(v)], dtype=np.float64)
    return {"mean": float(vals.mean()) if vals.size else None,
            "std": float(vals.std(ddof=1)) if vals.size > 1 else None, "n": int(vals.size)}


def mean_std(values: Sequence[Optional[float]]) -> str:
    """``"mean ± std"`` with the sample std (n − 1); ``"mean ± —"`` for one value; "—" for none.

    Missing values (None, e.g. an empty shot group) are left out; if some but not all are missing, the
    cell says how many values it averages.
    """
    st = stats(values)
    if st["mean"] is None:
        return "—"
    std = f"{st['std']:.2f}" if st["std"] is not None else "—"
    note = f" ({st['n']} of {len(values)})" if st["n"] < len(values) else ""
    return f"{st['mean']:.2f} ± {std}{note}"


def _value(group: Group, key: str) -> str:
    v = group.identity.get(key, ABSENT)
    return "—" if v is ABSENT else show(v)


def _commits(groups: Sequence[Group]) -> list[str]:
    return sorted({str(r.summary["commit"]) for g in groups for r in g.runs if r.summary.get("commit")})


def _prefixes(keys: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(k.split(".")[0] + (".*" if "." in k else "") for k in keys))


def to_markdown(cmp: Comparison) -> str:
    """One row per configuration (mean ± sample std of each metric, per-seed top-1), then the differences."""
    groups, diff = cmp.groups, cmp.differing
    head = ["config", "seeds"] + [label for _, label in METRICS] + ["top-1 per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in groups:
        cells = [cell(g.label), str(len(g.runs))]
        cells += [mean_std([r.summary.get(key) for r in g.runs]) for key, _ in METRICS]
        cells.append(", ".join(f"s{r.seed_text}: {fmt(r.summary.get('top1'))}" for r in g.runs))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("Percent; mean ± sample standard deviation (n − 1) over training seeds; — = no value "
                   "(an empty shot group, or a single seed's std).")]
    if any(len(r.seed) > 1 for g in groups for r in g.runs):
        lines.append("Two-part seeds are stage-1 seed / stage-2 (or DLSA) seed.")
    commits = _commits(groups)
    if commits:
        lines.append("Toolbox commit" + ("s" if len(commits) > 1 else "") + ": " + ", ".join(commits) + ".")
    if len(groups) > 1:
        lines += ["", "## Differences", ""]
        if diff:
            lines += [("Every setting whose value differs between the configurations (— = the setting does not "
                       "exist for that run kind); all other settings are equal, seeds aside."), ""]
            heads = ["setting"] + [cell(g.short) for g in groups]
            lines += ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
            lines += ["| " + " | ".join([cell(k)] + [cell(_value(g, k)) for g in groups]) + " |" for k in diff]
        else:
            lines.append("No setting differs.")
        if cmp.kind_only:
            lines += ["", (f"Not listed: {len(cmp.kind_only)} settings that only some run kinds have and that "
                           f"are equal wherever they exist ({_prefixes(cmp.kind_only)}); `--format json` gives "
                           f"every configuration's settings.")]
    return "\n".join(lines) + "\n"


def _num(v: Optional[float]) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.6f}"


def to_csv(cmp: Comparison) -> str:
    """One row per configuration: label, n_seeds, seeds, mean and sample std of each metric, per-seed top-1
    (``s0=70.1;s1=...``), then one column per differing setting (empty where it does not exist)."""
    groups, diff = cmp.groups, cmp.differing
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "n_seeds", "seeds"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")]
               + ["top1_per_seed"] + list(diff))
    for g in groups:
        row = [g.label, len(g.runs), ";".join(r.seed_text for r in g.runs)]
        for key, _ in METRICS:
            st = stats([r.summary.get(key) for r in g.runs])
            row += [_num(st["mean"]), _num(st["std"])]
        row.append(";".join(f"s{r.seed_text}={_num(r.summary.get('top1'))}" for r in g.runs))
        row += ["" if g.identity.get(k, ABSENT) is ABSENT else show(g.identity[k]) for k in diff]
        w.writerow(row)
    return buf.getvalue()


def _plain(v: Any) -> Any:
    """A JSON value: tuples as lists, non-finite floats as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def to_json(cmp: Comparison) -> str:
    """Every group with its full identity, the settings that tell it apart, its runs with their per-seed
    values, and the mean and sample std (n − 1, null below two values) of each metric."""
    groups, diff = cmp.groups, cmp.differing
    out = {"std": "sample standard deviation (n - 1)", "differing_keys": list(diff),
           "kind_only_keys": list(cmp.kind_only), "commits": _commits(groups), "groups": []}
    for g in groups:
        metrics = {key: stats([r.summary.get(key) for r in g.runs]) for key, _ in METRICS}
        out["groups"].append({
            "label": g.label, "short_label": g.short, "n_seeds": len(g.runs),
            "seeds": [optional_seed(r.seed) for r in g.runs],
            "differences": {k: g.identity[k] for k in diff if k in g.identity},
            "identity": g.identity,
            "mean": {k: m["mean"] for k, m in metrics.items()},
            "std": {k: m["std"] for k, m in metrics.items()},
            "n": {k: m["n"] for k, m in metrics.items()},
            "runs": [{"run": str(r.path), "name": r.summary.get("name"), "seed": optional_seed(r.seed),
                      **{key: r.summary.get(key) for key in ("top1", "top5", "many", "medium", "few", "ece")}}
                     for r in g.runs],
        })
    return json.dumps(_plain(out), indent=1, ensure_ascii=False) + "\n"


RENDER = {"markdown": to_markdown, "csv": to_csv, "json": to_json}


def compare_runs(run_dirs: Sequence[PathLike], fmt: str = "markdown") -> str:
    """The comparison of ``run_dirs`` as markdown (default), CSV or JSON text.

    Raises:
        LongtailError: an unknown format, no runs, a run that is missing or unfinished (named), or two
            runs of the same configuration with the same seed.
    """
    if fmt not in RENDER:
        raise LongtailError(f"compare format must be one of {', '.join(FORMATS)} (got '{fmt}')")
    return RENDER[fmt](group_runs(run_dirs))


def write_comparison(run_dirs: Sequence[PathLike], fmt: str = "markdown", out: Optional[PathLike] = None,
                     plot: Optional[PathLike] = None, overwrite: bool = False) -> tuple[str, list[Path]]:
    """Compare ``run_dirs``; write the text to ``out`` and the figure to ``plot`` (a ``.png``, with a PDF of
    the same stem beside it) when given.

    Every check (existing outputs are refused without ``overwrite``) happens before anything is written.

    Returns:
        the text and the paths written.
    """
    from longtail.report.compare_plot import comparison_figure
    from longtail.report.figures import save

    if fmt not in RENDER:
        raise LongtailError(f"compare format must be one of {', '.join(FORMATS)} (got '{fmt}')")
    targets: list[Path] = []
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise LongtailError(f"--out {out} is a folder; pass a file name for the table, e.g. {out / 'compare.md'}")
        targets.append(out)
    if plot is not None:
        plot = Path(plot)
        if plot.suffix.lower() != ".png" or plot.stem == "":
            raise LongtailError(f"--plot needs a file name ending in .png (got '{plot}'); the PDF is written beside it")
        targets += [plot, plot.with_suffix(".pdf")]
    resolved = [t.resolve() for t in targets]
    if len(set(resolved)) < len(resolved):
        raise LongtailError("--out and --plot name the same file; give the table and the figure their own names")
    for t in targets:
        if t.is_dir():
            raise LongtailError(f"{t} is a folder; pass a file name")
        refuse_overwrite(t, "a figure" if t != out else "a comparison", overwrite)
    cmp = group_runs(run_dirs)
    text = RENDER[fmt](cmp)
    fig = comparison_figure(cmp.groups) if plot is not None else None
    written = []
    if out is not None:
        written.append(atomic_write_text(out, text))
    if fig is not None:
        written += save(fig, plot)
    return text, written
