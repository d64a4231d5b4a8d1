"""The run directory: the one owner of its layout, its files and its ``summary.json`` schema.

Every command that produces a run (``train``, ``decouple``, ``dlsa``) writes it through :class:`RunDir`,
and ``eval``, ``report``, ``compare``, ``extract`` read it through the same class::

    runs/NAME/
      config.yaml          the resolved config, enough to rerun
      metrics.jsonl        one JSON line per epoch (or stage)
      summary.json         the final record: see :func:`summary_record`
      checkpoints/last.pt  training state for resuming (train only)
      model.safetensors    final weights, loadable without pickle
      model_ema.safetensors  the final moving average of the weights (train.ema_decay only)
      pretrained.json      the report of the pretrained weights it started from (model.pretrained)
      tb/                  TensorBoard events
      report/              report.md, per_class.csv, figures

Every file is written atomically (:mod:`longtail.fileio`). Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from longtail.errors import CheckpointError, LongtailError
from longtail.fileio import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["RunDir", "summary_record", "environment", "git_commit", "SUMMARY_KINDS"]

#: what produced a run directory
SUMMARY_KINDS = ("train", "decouple", "dlsa")
#: the metrics every summary carries (from :func:`longtail.metrics.MetricAccumulator.compute`)
METRIC_KEYS = ("top1", "top5", "many", "medium", "few", "per_class", "ece", "calibration")


def git_commit() -> str:
    """The toolbox's git commit (with ``-dirty`` for local changes), or ``unknown`` outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str, command: str = "", commit: Optional[str] = None) -> dict:
    """Where and how a run was made: device, torch and Python versions, git commit, command and date."""
    import torch

    return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "commit": git_commit() if commit is None else commit, "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def summary_record(*, kind: str, name: str, tags: dict, metrics: dict, train_counts, class_names,
                   wall_seconds: float, env: dict, data_verified: bool, extra: Optional[dict] = None,
                   shots=None) -> dict:
    """The ``summary.json`` of every run, one schema for train, decouple and dlsa.

    Args:
        kind: one of :data:`SUMMARY_KINDS`.
        name: the run's name.
        tags: what identifies the configuration (dataset, imbalance, method, backbone, epochs, batch_size,
            augment, sampler, seed, split_seed, selection, posthoc_tau ...), written first.
        metrics: the evaluator's metrics (:data:`METRIC_KEYS` and ``num_samples``).
        train_counts: training images per class; class_names: one per class.
        wall_seconds: training time; env: :func:`environment`; data_verified: checksums were verified.
        extra: kind-specific records (``stage2`` for decouple, ``stages`` for dlsa, ``completed_epochs`` ...).
        shots: the :class:`~longtail.data.splits.ShotRule` of the Many/Medium/Few metrics (default 100/20);
            recorded as ``shot_rule``, with ``shots`` (classes per group) and ``imbalance_measured`` (the
            training split's largest / smallest class count).
    """
    from longtail.data.splits import ShotRule, measured_imbalance

    if kind not in SUMMARY_KINDS:
        raise ValueError(f"kind must be one of {SUMMARY_KINDS} (got {kind!r})")
    counts = [int(c) for c in train_counts]
    return {"kind": kind, "name": name, **tags, **{k: metrics[k] for k in METRIC_KEYS},
            "num_test": metrics.get("num_samples"), "train_counts": counts,
            "class_names": [str(c) for c in class_names], "shot_rule": (shots or ShotRule()).to_dict(),
            "shots": (shots or ShotRule()).summary(counts), "imbalance_measured": measured_imbalance(counts),
            "wall_seconds": float(wall_seconds), **env, "data_verified": bool(data_verified), **(extra or {})}


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}`` in the run directory")


class RunDir:
    """A run directory: paths, the refusal to overwrite a run, atomic writes and reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ layout

    config_path = _file("config.yaml")
    summary_path = _file("summary.json")
    metrics_path = _file("metrics.jsonl")
    checkpoint_path = _file("checkpoints/last.pt")
    weights_path = _file("model.safetensors")
    ema_weights_path = _file("model_ema.safetensors")
    tb_path = _file("tb")
    report_path = _file("report")

    # ------------------------------------------------------------------ state

    #: every entry a run writes at its top level (``--overwrite`` removes exactly these, nothing else)
    ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "model.safetensors",
               "model_ema.safetensors", "tb", "report", "decouple.yaml", "features", "predictions.npz",
               "pretrained.json")

    def holds_run(self) -> bool:
        """True when a run was started or finished here (any of its files exists)."""
        return any((self.path / e).exists() for e in self.ENTRIES)

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def refuse_existing(self, hint: str = "", overwrite: bool = False) -> None:
        """Raise :class:`~longtail.errors.OutputExistsError` if this folder already holds a run (nothing is ever
        silently overwritten); with ``overwrite`` return, and :meth:`clear` removes it when writing starts."""
        from longtail.errors import OutputExistsError
        from longtail.fileio import OVERWRITE_HINT

        if self.path.exists() and not self.path.is_dir():
            raise OutputExistsError(f"{self.path} is a file, not a folder; pick another folder with --out "
                                    f"(nothing was changed)")
        if self.holds_run() and not overwrite:
            raise OutputExistsError(f"{self.path} already holds a run; {hint}{OVERWRITE_HINT}")

    def clear(self) -> "RunDir":
        """Delete the run files of this folder (:data:`ENTRIES`), leaving any other file in it alone."""
        import shutil

        for e in self.ENTRIES:
            p = self.path / e
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        return self

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------ writing

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def write_config(self, text: str) -> Path:
        return atomic_write_text(self.config_path, text)

    def write_summary(self, record: dict) -> Path:
        return atomic_write_json(self.summary_path, record)

    def write_metrics(self, rows: list[dict]) -> Path:
        return atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_weights(self, state_dict: dict, ema: bool = False) -> Path:
        """The network's weights as ``model.safetensors`` (with ``ema``: their moving average as
        ``model_ema.safetensors``), contiguous CPU tensors, no pickle."""
        from safetensors.torch import save_file

        sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        return atomic_write(self.ema_weights_path if ema else self.weights_path, lambda tmp: save_file(sd, str(tmp)))

    # ------------------------------------------------------------------ reading

    def read_summary(self) -> Optional[dict]:
        """The summary, or None when the run has none (yet)."""
        if not self.summary_path.is_file():
            return None
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError) as e:
            raise LongtailError(f"{self.summary_path} cannot be read ({e}); the run directory is damaged") from None

    def read_json(self, name: str) -> Optional[Any]:
        """A JSON file of the run (e.g. ``pretrained.json``), or None when it has none."""
        p = self.path / name
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise LongtailError(f"{p} cannot be read ({e}); the run directory is damaged") from None

    def require_config(self) -> Path:
        if not self.config_path.is_file():
            raise LongtailError(f"{self.path} has no config.yaml: pass the folder of a longtail run")
        return self.config_path

    def load_weights(self, ema: bool = False) -> dict:
        """The final weights (``model.safetensors``), else the checkpoint's model state; with ``ema`` their
        moving average (``model_ema.safetensors``, else the checkpoint's)."""
        path = self.ema_weights_path if ema else self.weights_path
        if path.is_file():
            from safetensors.torch import load_file

            try:
                return load_file(str(path))
            except Exception as e:  # safetensors raises its own error types for damaged files
                raise CheckpointError(f"{path} is damaged ({e}); re-export it or retrain") from None
        from longtail.engine.checkpoint import load_checkpoint

        if not ema:
            return load_checkpoint(self.checkpoint_path)["model"]
        if not self.checkpoint_path.is_file():
            raise LongtailError(f"{self.path} has no {path.name}: it was not trained with train.ema_decay")
        state = load_checkpoint(self.checkpoint_path)
        if "ema" not in state:
            raise LongtailError(f"{self.path} has no moving average of the weights: it was not trained with "
                                f"train.ema_decay")
        return state["ema"]["weights"]
