"""Reading a run directory for reports, and the small formatting helpers every report module shares.

The run directory is the contract with the trainer (:mod:`longtail.rundir`): ``summary.json`` (final
metrics and tags, required), ``metrics.jsonl`` (one JSON object per epoch or stage epoch, optional) and
``config.yaml`` (the resolved config, optional). These functions only read them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from longtail.data.splits import ShotRule, measured_imbalance
from longtail.errors import LongtailError

PathLike = Union[str, Path]
#: Keys without which a summary is not a finished run.
REQUIRED = ("top1", "per_class", "train_counts")


def number(x: Any) -> bool:
    """True for a finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, digits: int = 2) -> str:
    """A percentage with ``digits`` decimals, or "—" for a missing value."""
    return f"{x:.{digits}f}" if number(x) else "—"


def fmt_imbalance(x: Any) -> str:
    """An imbalance factor as configured: ``100`` rather than ``100.0``."""
    if number(x) and float(x).is_integer():
        return str(int(x))
    return str(x)


def cell(x: Any) -> str:
    """A markdown table cell: no pipe or newline breaks the row."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def method_label(name: Any) -> str:
    """The method as printed; BBL is a reconstruction of an unreleased method and says so."""
    name = str(name)
    if name.lower().startswith("bbl"):
        return "BBL (reconstruction)" if name.lower() == "bbl" else f"BBL (reconstruction): {name}"
    return name


def shot_rule(summary: dict[str, Any]) -> ShotRule:
    """The shot rule a summary's Many / Medium / Few were computed with (100 / 20 for older summaries)."""
    rule = summary.get("shot_rule")
    try:
        return ShotRule.of(rule if isinstance(rule, dict) else None)
    except (TypeError, ValueError) as e:
        raise LongtailError(f"summary.json: shot_rule must be {{many_above: N, few_below: M}} (got {rule!r}): {e}") \
            from None


def imbalance_of(summary: dict[str, Any]) -> Optional[float]:
    """The measured imbalance (largest / smallest training class) of a summary, computed for older ones."""
    if "imbalance_measured" in summary:
        v = summary["imbalance_measured"]
        return float(v) if number(v) else None
    return measured_imbalance(summary["train_counts"])


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
    if not number(data["top1"]):
        raise LongtailError(f"{path}: top1 must be a number (got {data['top1']!r})")
    per_class, counts = data["per_class"], data["train_counts"]
    if not isinstance(per_class, list) or not isinstance(counts, list) or len(per_class) != len(counts):
        raise LongtailError(
            f"{path}: per_class and train_counts must be lists of the same length "
            f"(got {len(per_class) if isinstance(per_class, list) else per_class!r} and "
            f"{len(counts) if isinstance(counts, list) else counts!r})"
        )
    if not all(number(n) and n >= 0 for n in counts):
        raise LongtailError(f"{path}: train_counts must be non-negative numbers, one per class")
    names = data.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(counts)):
        raise LongtailError(f"{path}: class_names must list one name per class ({len(counts)} classes)")
    shot_rule(data)  # a malformed rule is reported here, naming the file
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


def load_yaml_mapping(path: Path, what: str) -> Optional[dict[str, Any]]:
    """A YAML file holding a mapping, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LongtailError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LongtailError(f"{path} must hold a mapping of {what} (got {type(data).__name__})")
    return data


def load_config(run_dir: PathLike) -> Optional[dict[str, Any]]:
    """The resolved config of ``RUN/config.yaml`` as a dict, or None when the file does not exist."""
    return load_yaml_mapping(Path(run_dir) / "config.yaml", "config sections")


def run_title(summary: dict[str, Any], run_dir: PathLike) -> str:
    """The run's name for titles: the summary's name, with the folder's name when that differs."""
    folder = Path(run_dir).resolve().name
    name = str(summary.get("name") or folder)
    return name if name == folder else f"{name} ({folder})"
