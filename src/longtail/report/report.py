"""Read a run directory and write its report: ``RUN/report/report.md``, ``per_class.csv`` and PNG plots.

The run directory is the contract with the trainer (docs/architecture.md): ``summary.json`` (final metrics
and tags, required), ``metrics.jsonl`` (one JSON object per epoch, optional: without it there are no
curves) and ``config.yaml`` (the resolved config, optional). This module only reads them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from longtail.data.splits import GROUPS, shot_group_ids, shot_summary
from longtail.errors import LongtailError
from longtail.report import plots

PathLike = Union[str, Path]
#: Keys without which a summary is not a finished run.
REQUIRED = ("top1", "per_class", "train_counts")
#: Reports list every class up to this many; beyond it the table lives in per_class.csv only.
MAX_CLASS_ROWS = 200
PLOT_FILES = ("per_class_vs_count.png", "shot_groups.png", "reliability.png", "curves.png", "dlsa_stages.png")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 2) -> str:
    """A percentage with ``digits`` decimals, or "—" for a missing value."""
    return f"{x:.{digits}f}" if _number(x) else "—"


def fmt_imbalance(x: Any) -> str:
    if _number(x) and float(x).is_integer():
        return str(int(x))
    return str(x)


def method_label(name: Any) -> str:
    """The method as printed; BBL is a reconstruction of an unreleased method and says so."""
    name = str(name)
    if name.lower().startswith("bbl"):
        return "BBL (reconstruction)" if name.lower() == "bbl" else f"BBL (reconstruction): {name}"
    return name


def load_summary(run_dir: PathLike) -> dict[str, Any]:
    """Read and check ``RUN/summary.json``; raise :class:`LongtailError` naming the run if unusable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LongtailError(f"run folder '{run_dir}' does not exist; pass the folder of a run, e.g. runs/NAME")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise LongtailError(
            f"{run_dir} has no summary.json: is it a finished run? Train it to the end (or resume it), "
            "or pass the run folder itself"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LongtailError(f"{path} is not valid JSON ({e}); the run was probably cut off while writing it") from None
    if not isinstance(data, dict):
        raise LongtailError(f"{path} must hold a JSON object (got {type(data).__name__})")
    missing = [k for k in REQUIRED if data.get(k) is None]
    if missing:
        raise LongtailError(
            f"{path} lacks {', '.join(missing)}: the run {run_dir.name} did not finish; "
            "finish or resume its training, then report it"
        )
    if not _number(data["top1"]):
        raise LongtailError(f"{path}: top1 must be a number (got {data['top1']!r})")
    per_class, counts = data["per_class"], data["train_counts"]
    if not isinstance(per_class, list) or not isinstance(counts, list) or len(per_class) != len(counts):
        raise LongtailError(
            f"{path}: per_class and train_counts must be lists of the same length "
            f"(got {len(per_class) if isinstance(per_class, list) else per_class!r} and "
            f"{len(counts) if isinstance(counts, list) else counts!r})"
        )
    names = data.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(counts)):
        raise LongtailError(f"{path}: class_names must list one name per class ({len(counts)} classes)")
    return data


def load_metrics(run_dir: PathLike) -> Optional[list[dict[str, Any]]]:
    """The per-epoch records of ``RUN/metrics.jsonl``, or None when the file does not exist.

    A cut-off last line (the run was killed while writing) is ignored; any other bad line is an error.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [(i + 1, line) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    records = []
    for pos, (lineno, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if pos == len(lines) - 1:
                break
            raise LongtailError(f"{path} line {lineno} is not valid JSON: {line[:80]!r}") from None
        if not isinstance(rec, dict):
            raise LongtailError(f"{path} line {lineno} must be a JSON object (got {line[:80]!r})")
        records.append(rec)
    return records


def load_config(run_dir: PathLike) -> Optional[dict[str, Any]]:
    """The resolved config of ``RUN/config.yaml`` as a dict, or None when the file does not exist."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LongtailError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LongtailError(f"{path} must hold a mapping of config sections (got {type(data).__name__})")
    return data


def per_class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class: class, name, train_count, group, accuracy (None when absent from test)."""
    counts = [int(n) for n in summary["train_counts"]]
    names = summary.get("class_names") or [str(c) for c in range(len(counts))]
    groups = [GROUPS[g] for g in shot_group_ids(counts)] if counts else []
    return [
        {"class": c, "name": str(names[c]), "train_count": counts[c], "group": groups[c],
         "accuracy": summary["per_class"][c] if _number(summary["per_class"][c]) else None}
        for c in range(len(counts))
    ]


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", "train_count", "group", "accuracy"])
        for r in rows:
            acc = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            w.writerow([r["class"], r["name"], r["train_count"], r["group"], acc])


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _tags(summary: dict[str, Any], config: Optional[dict[str, Any]]) -> list[tuple[str, str]]:
    s = summary
    data_cfg = (config or {}).get("data") or {}
    verified = s.get("data_verified")
    tags = [
        ("dataset", s.get("dataset", "?")),
        ("imbalance ρ", fmt_imbalance(s.get("imbalance", "?"))),
        ("backbone", s.get("backbone", "?")),
        ("method", method_label(s.get("method", "?"))),
        ("epochs", s.get("epochs", "?")),
        ("batch size", s.get("batch_size", "?")),
        ("augmentation", s.get("augment", "?")),
        ("selection rule", s.get("selection", "?")),
        ("seed", s.get("seed", "?")),
    ]
    if isinstance(data_cfg, dict) and "profile" in data_cfg:
        tags.append(("split generator", f"{data_cfg.get('profile')}, split seed {data_cfg.get('split_seed', '?')}"))
    if _number(s.get("posthoc_tau")) and s["posthoc_tau"] != 0:
        tags.append(("post-hoc τ", f"{s['posthoc_tau']:g}"))
    tags += [
        ("commit", s.get("commit", "?")),
        ("data verified", "?" if verified is None else ("yes" if verified else "no")),
        ("device", s.get("device", "?")),
        ("torch", s.get("torch", "?")),
    ]
    if _number(s.get("wall_seconds")):
        tags.append(("wall time", f"{s['wall_seconds'] / 60:.1f} min"))
    if _number(s.get("steps")):
        tags.append(("optimiser steps", s["steps"]))
    return [(k, _cell(v)) for k, v in tags]


def _markdown(summary: dict[str, Any], config: Optional[dict[str, Any]], rows: list[dict[str, Any]],
              images: list[str], name: str) -> str:
    s = summary
    shots = s.get("shots") or shot_summary(s["train_counts"])
    out = [f"# Run report: {_cell(s.get('name') or name)}", ""]
    if str(s.get("method", "")).lower().startswith("bbl"):
        out += ["> BBL is a reconstruction from the paper (no official code); compare its numbers with care.", ""]
    out += ["| tag | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in _tags(s, config)]
    out += ["", "## Results", ""]
    head = ["overall top-1"] + [f"{g.capitalize()} ({shots.get(g, 0)} classes)" for g in GROUPS] + ["top-5", "ECE"]
    vals = [fmt(s.get("top1"))] + [fmt(s.get(g)) for g in GROUPS] + [fmt(s.get("top5")), fmt(s.get("ece"))]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), "| " + " | ".join(vals) + " |", ""]
    out += ["Accuracies and ECE in percent; a group with no class is shown as —. Shot groups by training "
            "count: Many n > 100, Medium 20 ≤ n ≤ 100, Few n < 20.", ""]
    stages = s.get("stages")
    if isinstance(stages, list) and stages:
        out += ["## DLSA stages", "", "| stage | train | test | filtered Many / Medium / Few (%) | purity | NMI | accuracy |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for st in stages:
            sh = st.get("filtered_share") or {}
            share = " / ".join(fmt(100.0 * sh[g], 1) if _number(sh.get(g)) else "—" for g in GROUPS)
            label = "regular" if st.get("kind") == "regular" else str(st.get("stage"))
            out.append(f"| {label} | {st.get('train_count')} | {st.get('test_count')} | {share} | "
                       f"{fmt(st.get('purity'), 3)} | {fmt(st.get('nmi'), 3)} | {fmt(st.get('accuracy'))} |")
        out += [""]
    if images:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in images] + [""]
    out += ["## Per-class accuracy", ""]
    if len(rows) > MAX_CLASS_ROWS:
        out += [f"{len(rows)} classes: see [per_class.csv](per_class.csv).", ""]
    else:
        out += ["| class | name | train count | group | accuracy |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {r['class']} | {_cell(r['name'])} | {r['train_count']} | {r['group']} | {fmt(r['accuracy'])} |"
                for r in rows]
        out += ["", "Also in [per_class.csv](per_class.csv)."]
    return "\n".join(out) + "\n"


def write_report(run_dir: PathLike) -> Path:
    """Write ``RUN/report/report.md``, ``per_class.csv`` and the PNG plots; return the report's path.

    Raises:
        LongtailError: the folder is not a finished run, or one of its files is malformed.
    """
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    records = load_metrics(run_dir)
    config = load_config(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in PLOT_FILES:  # a re-run must not keep a plot whose input has since disappeared
        (out / stale).unlink(missing_ok=True)

    rows = per_class_rows(summary)
    _write_csv(rows, out / "per_class.csv")
    images = []
    plots.per_class_vs_count([r["train_count"] for r in rows], [r["accuracy"] for r in rows],
                             [r["group"] for r in rows], out / "per_class_vs_count.png")
    images.append("per_class_vs_count.png")
    plots.shot_groups({k: summary.get(k) for k in ("top1", *GROUPS)}, out / "shot_groups.png")
    images.append("shot_groups.png")
    calibration = summary.get("calibration")
    if isinstance(calibration, dict) and _number(calibration.get("bins")):
        plots.reliability(calibration, summary.get("ece"), out / "reliability.png")
        images.append("reliability.png")
    if records and plots.curves(records, out / "curves.png") is not None:
        images.append("curves.png")
    stages = summary.get("stages")
    if isinstance(stages, list) and stages and plots.dlsa_stages(stages, out / "dlsa_stages.png") is not None:
        images.append("dlsa_stages.png")

    path = out / "report.md"
    path.write_text(_markdown(summary, config, rows, images, run_dir.name))
    return path
