"""One run's report: ``report.md``, ``per_class.csv`` and its figures (each as PNG and PDF).

:func:`write_report` reads a run directory (:mod:`longtail.report.common`) and writes the report to
``RUN/report`` or another folder; an existing ``report.md`` there is replaced only with ``overwrite``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure

from longtail.data.splits import GROUPS, ShotRule
from longtail.errors import LongtailError
from longtail.fileio import atomic_write_text, refuse_overwrite
from longtail.report import plots
from longtail.report.common import (PathLike, cell, fmt, fmt_imbalance, imbalance_of, load_config, load_metrics,
                                    load_summary, method_label, number, run_title, shot_rule)
from longtail.report.figures import save

#: Reports list every class up to this many; beyond it the table lives in per_class.csv only.
MAX_CLASS_ROWS = 200
#: The tags list the class names up to this many classes.
MAX_NAMED_TAG = 20
#: Every figure a report may hold (each as .png and .pdf); a rewritten report removes those it no longer has.
FIGURES = ("per_class_vs_count", "shot_groups", "reliability", "curves", "dlsa_stages")
PLOT_FILES = tuple(f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf"))
_cell = cell  # the name other modules used


def per_class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class: class, name, train_count, group (by the summary's shot rule), accuracy (None
    when the class is absent from the test set)."""
    counts = [int(n) for n in summary["train_counts"]]
    names = summary.get("class_names") or [str(c) for c in range(len(counts))]
    groups = [GROUPS[g] for g in shot_rule(summary).ids(counts)] if counts else []
    return [
        {"class": c, "name": str(names[c]), "train_count": counts[c], "group": groups[c],
         "accuracy": summary["per_class"][c] if number(summary["per_class"][c]) else None}
        for c in range(len(counts))
    ]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "name", "train_count", "group", "accuracy"])
    for r in rows:
        w.writerow([r["class"], r["name"], r["train_count"], r["group"],
                    "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"])
    return buf.getvalue()


def imbalance_text(summary: dict[str, Any]) -> tuple[str, str]:
    """The configured imbalance factor (with the measured one when they differ) and the measured one."""
    configured, measured = summary.get("imbalance"), imbalance_of(summary)
    shown = fmt_imbalance(configured if configured is not None else "?")
    if measured is None:
        return shown, "— (a class has no training image)"
    if number(configured) and abs(float(configured) - measured) > 1e-6 * max(1.0, measured):
        shown = f"{shown} (configured) · {measured:.1f} (measured)"
    return shown, f"{measured:.1f} (largest / smallest training class)"


def _epochs(summary: dict[str, Any]) -> str:
    epochs, done = summary.get("epochs", "?"), summary.get("completed_epochs")
    if number(epochs) and number(done) and done < epochs:
        return f"{done:g} of {epochs} (stopped early by train.max_steps)"
    return str(epochs)


def _classes(rows: list[dict[str, Any]]) -> str:
    if len(rows) <= MAX_NAMED_TAG:
        return f"{len(rows)}: " + ", ".join(r["name"] for r in rows)
    where = "the per-class table below" if len(rows) <= MAX_CLASS_ROWS else "per_class.csv"
    return f"{len(rows)} (names in {where})"


def _tags(summary: dict[str, Any], config: Optional[dict[str, Any]], rows: list[dict[str, Any]]) -> list[tuple]:
    s = summary
    data_cfg = (config or {}).get("data") or {}
    verified = s.get("data_verified")
    configured, measured = imbalance_text(s)
    tags = [("run kind", s["kind"])] if s.get("kind") not in (None, "train") else []
    tags += [
        ("dataset", s.get("dataset", "?")),
        ("classes", _classes(rows)),
        ("imbalance ρ", configured),
        ("measured imbalance", measured),
        ("shot groups", shot_rule(s).describe()),
        ("backbone", s.get("backbone", "?")),
        ("method", method_label(s.get("method", "?"))),
        ("epochs", _epochs(s)),
        ("batch size", s.get("batch_size", "?")),
        ("augmentation", s.get("augment", "?")),
        ("selection rule", s.get("selection", "?")),
        ("seed", s.get("seed", "?")),
    ]
    if isinstance(data_cfg, dict) and "profile" in data_cfg and s.get("split_generated", True):
        tags.append(("split generator", f"{data_cfg.get('profile')}, split seed {data_cfg.get('split_seed', '?')}"))
    if number(s.get("posthoc_tau")) and s["posthoc_tau"] != 0:
        tags.append(("post-hoc τ", f"{s['posthoc_tau']:g}"))
    tags += _training_tags(config)
    tags += [
        ("commit", s.get("commit", "?")),
        ("data verified", "?" if verified is None else ("yes" if verified else "no")),
        ("device", s.get("device", "?")),
        ("torch", s.get("torch", "?")),
    ]
    if number(s.get("wall_seconds")):
        secs = float(s["wall_seconds"])
        tags.append(("wall time", f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.1f} s"))
    if number(s.get("steps")):
        tags.append(("optimiser steps", s["steps"]))
    return [(k, cell(v)) for k, v in tags]


def _training_tags(config: Optional[dict[str, Any]]) -> list[tuple]:
    """Tags for the training options that are not the defaults: optimiser, gradient accumulation, EMA."""
    optim = (config or {}).get("optim") or {}
    train = (config or {}).get("train") or {}
    tags = []
    if isinstance(optim, dict) and optim.get("name", "sgd") != "sgd":
        tags.append(("optimiser", optim["name"]))
    if isinstance(train, dict) and (train.get("accumulate") or 1) > 1:
        tags.append(("gradient accumulation", f"{train['accumulate']} micro-batches per step"))
    if isinstance(train, dict) and train.get("ema_decay") is not None:
        tags.append(("EMA of the weights", f"decay {train['ema_decay']:g}" + (", warm-up" if train.get("ema_warmup")
                                                                               else "")))
    return tags


def empty_group_note(summary: dict[str, Any]) -> Optional[str]:
    """A sentence naming the shot groups without a class under the summary's rule, or None."""
    rule, counts = shot_rule(summary), [int(n) for n in summary["train_counts"]]
    shots = rule.summary(counts)
    empty = [g for g in GROUPS if shots[g] == 0]
    if not empty or not counts:
        return None
    names = " and ".join(g.capitalize() for g in empty)
    return (f"No {names} class: under the shot rule {rule.describe()} the training counts run from {min(counts)} "
            f"to {max(counts)}, so {names} {'is' if len(empty) == 1 else 'are'} shown as —. "
            f"Set `eval.many_above` / `eval.few_below` for other thresholds.")


def _markdown(summary: dict[str, Any], config: Optional[dict[str, Any]], rows: list[dict[str, Any]],
              figures: list[str], title: str) -> str:
    s = summary
    rule = shot_rule(s)
    shots = rule.summary([r["train_count"] for r in rows])
    out = [f"# Run report: {cell(title)}", ""]
    if str(s.get("method", "")).lower().startswith("bbl"):
        out += ["> BBL is a reconstruction from the paper (no official code); compare its numbers with care.", ""]
    out += ["| tag | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in _tags(s, config, rows)]
    out += ["", "## Results", ""]
    head = (["overall top-1"] + [f"{g.capitalize()} ({shots[g]} class{'' if shots[g] == 1 else 'es'})" for g in GROUPS]
            + ["top-5", "ECE"])
    vals = [fmt(s.get("top1"))] + [fmt(s.get(g)) for g in GROUPS] + [fmt(s.get("top5")), fmt(s.get("ece"))]
    ema = s.get("metrics_ema")
    if isinstance(ema, dict):  # train.ema_decay: the average's row below the trained weights' own
        ema_vals = [fmt(ema.get("top1"))] + [fmt(ema.get(g)) for g in GROUPS] + [fmt(ema.get("top5")),
                                                                                 fmt(ema.get("ece"))]
        head, vals = ["weights"] + head, ["trained (model.safetensors)"] + vals
        ema_vals = ["EMA weights (model_ema.safetensors)"] + ema_vals
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), "| " + " | ".join(vals) + " |"]
    if isinstance(ema, dict):
        out += ["| " + " | ".join(ema_vals) + " |"]
    out += [""]
    default = " (the protocol's)" if rule == ShotRule() else " (set by eval.many_above / eval.few_below)"
    out += [(f"Accuracies and ECE in percent; a group with no class is shown as —. Shot groups by training "
             f"count: {rule.describe()}{default}."), ""]
    if isinstance(ema, dict):
        out += ["The run's main metrics (summary.json's top level, compare, the figures) are the trained weights'; "
                "the EMA weights (an exponential moving average of them, train.ema_decay) are reported beside "
                "them only.", ""]
    note = empty_group_note(s)
    if note:
        out += [f"> **Note.** {note}", ""]
    stages = s.get("stages")
    if isinstance(stages, list) and stages:
        out += ["## DLSA stages", "",
                "| stage | train | test | filtered Many / Medium / Few (%) | purity | NMI | accuracy |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for st in stages:
            sh = st.get("filtered_share") or {}
            share = " / ".join(fmt(100.0 * sh[g], 1) if number(sh.get(g)) else "—" for g in GROUPS)
            label = "regular" if st.get("kind") == "regular" else str(st.get("stage"))
            out.append(f"| {label} | {st.get('train_count')} | {st.get('test_count')} | {share} | "
                       f"{fmt(st.get('purity'), 3)} | {fmt(st.get('nmi'), 3)} | {fmt(st.get('accuracy'))} |")
        out += [""]
    if figures:
        out += ["## Figures", ""]
        for f in figures:
            out += [f"![{f}]({f}.png)", "", f"PDF: [{f}.pdf]({f}.pdf)", ""]
    out += ["## Per-class accuracy", ""]
    if len(rows) > MAX_CLASS_ROWS:
        out += [f"{len(rows)} classes: see [per_class.csv](per_class.csv).", ""]
    else:
        out += ["| class | name | train count | group | accuracy |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {r['class']} | {cell(r['name'])} | {r['train_count']} | {r['group']} | {fmt(r['accuracy'])} |"
                for r in rows]
        out += ["", "Also in [per_class.csv](per_class.csv)."]
    return "\n".join(out) + "\n"


def report_figures(summary: dict[str, Any], records: Optional[list[dict[str, Any]]], title: str) -> dict[str, Figure]:
    """The report's figures by file stem (see :data:`FIGURES`), drawn but not saved."""
    rows = per_class_rows(summary)
    rule = shot_rule(summary)
    figs: dict[str, Optional[Figure]] = {
        "per_class_vs_count": plots.per_class_vs_count(
            [r["train_count"] for r in rows], [r["accuracy"] for r in rows], [r["group"] for r in rows], title,
            rule=rule, names=[r["name"] for r in rows]),
        "shot_groups": plots.shot_groups({k: summary.get(k) for k in ("top1", *GROUPS)},
                                         rule.summary([r["train_count"] for r in rows]), title),
    }
    calibration = summary.get("calibration")
    if isinstance(calibration, dict) and number(calibration.get("bins")) and calibration["bins"] >= 1:
        figs["reliability"] = plots.reliability(calibration, summary.get("ece"), title)
    if records:
        figs["curves"] = plots.curves(records, title)
    stages = summary.get("stages")
    if isinstance(stages, list) and stages:
        figs["dlsa_stages"] = plots.dlsa_stages(stages, title)
    return {k: v for k, v in figs.items() if v is not None}


def write_report(run_dir: PathLike, out: Optional[PathLike] = None, overwrite: bool = False) -> Path:
    """Write ``report.md``, ``per_class.csv`` and the figures (PNG and PDF) of a run to ``out`` (default
    ``RUN/report``); return the path of ``report.md``.

    An existing ``report.md`` in ``out`` is refused unless ``overwrite``; figure files of an earlier report
    that this one does not draw are removed. Nothing is written before every input has been read.

    Raises:
        LongtailError: the folder is not a finished run, one of its files is malformed, ``out`` is a file,
            or ``out`` holds a report and ``overwrite`` is false (:class:`~longtail.errors.OutputExistsError`).
    """
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    records = load_metrics(run_dir)
    config = load_config(run_dir)
    target = Path(out) if out is not None else run_dir / "report"
    if target.exists() and not target.is_dir():
        raise LongtailError(f"{target} is a file; pass a folder for the report with --out")
    refuse_overwrite(target / "report.md", "a report", overwrite)

    title = run_title(summary, run_dir)
    rows = per_class_rows(summary)
    figs = report_figures(summary, records, title)
    text = _markdown(summary, config, rows, list(figs), title)

    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "per_class.csv", _csv(rows))
    written = set()
    for stem, fig in figs.items():
        written.update(p.name for p in save(fig, target / f"{stem}.png"))
    for stale in PLOT_FILES:  # a rewritten report keeps no figure whose input has since disappeared
        if stale not in written:
            (target / stale).unlink(missing_ok=True)
    return atomic_write_text(target / "report.md", text)
