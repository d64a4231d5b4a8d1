"""Which runs are seeds of one configuration (docs/reporting.md, "Grouping").

A run's identity is its kind (train, decouple, dlsa), its flattened resolved configuration without the
seed and without :data:`IGNORED` keys, and its length (the summary's ``steps`` and ``completed_epochs``):

* train: ``config.yaml`` (``data.*``, ``model.*``, ``method.*``, ``optim.*``, ``train.*``, ``eval.*``),
  completed with the defaults of keys added since the run was made;
* decouple: the stage-1 ``config.yaml`` it carries, plus ``decouple.*`` (its ``decouple.yaml``, else the
  summary's ``stage2.config``) and ``decouple.method``;
* dlsa: ``dlsa.*`` (its ``config.yaml``) plus the stage-1 tags its features recorded (dataset, imbalance,
  method, backbone, epochs, batch_size, augment) and the shot rule;
* a run without ``config.yaml``: the summary's tags.

Runs with equal identities are seeds of one configuration; two of them with the same seed are refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from longtail.config import NEUTRAL_KEYS, flatten
from longtail.errors import LongtailError
from longtail.report.common import (PathLike, fmt_imbalance, load_config, load_summary, load_yaml_mapping,
                                    method_label, number)

#: Config keys that do not change the experiment, and why; left out of every identity.
IGNORED = {
    **NEUTRAL_KEYS,
    "train.seed": "the seed: it tells the runs of one configuration apart",
    "decouple.seed": "the stage-2 seed (part of the run's seed)",
    "decouple.extract_batch_size": "the feature-extraction batch size",
    "dlsa.seed": "the DLSA seed (part of the run's seed)",
    "dlsa.chunk_size": "samples per chunk when the flow scores features",
}
#: Summary tags identifying a run without config.yaml (besides kind, shot rule and length).
FALLBACK_TAGS = ("dataset", "imbalance", "method", "backbone", "epochs", "batch_size", "augment", "sampler",
                 "split_seed", "selection", "posthoc_tau")
#: Stage-1 tags a DLSA run carries from its features.
DLSA_TAGS = ("dataset", "imbalance", "method", "backbone", "epochs", "batch_size", "augment")
#: The summary's length of a run: runs of different lengths are never averaged.
LENGTH = ("steps", "completed_epochs")
ABSENT = ("<absent>",)


def norm(v: Any) -> Any:
    """A hashable value that equal settings share: 100 and 100.0 are equal, lists become tuples."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return tuple(norm(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), norm(x)) for k, x in v.items()))
    return str(v)


def show(v: Any) -> str:
    """A setting as an override would write it: ``0.05``, ``200``, ``null``, ``true``, ``[160, 180]``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return str(v)


def run_kind(summary: dict[str, Any]) -> str:
    """train, decouple or dlsa (older summaries without ``kind`` are told by their records)."""
    kind = summary.get("kind")
    if kind:
        return str(kind)
    return "dlsa" if "stages" in summary else "decouple" if "stage2" in summary else "train"


def _train_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The resolved train config with every current key (older runs lack keys added since)."""
    from longtail.config import Config, from_dict, to_dict

    raw = {k: v for k, v in raw.items() if k != "plugins"}  # never import a run's plugin code to compare it
    try:
        return to_dict(from_dict(raw))
    except (LongtailError, TypeError, ValueError, KeyError, AttributeError):
        # e.g. a plugin's method that is not loaded here: its keys as written, other sections completed
        full = to_dict(Config())
        out = dict(raw)
        for section, defaults in full.items():
            if isinstance(defaults, dict) and section != "method" and isinstance(raw.get(section), dict):
                out[section] = {**defaults, **raw[section]}
        return out


def _shot_rule(summary: dict[str, Any]) -> dict[str, Any]:
    return flatten({"shot_rule": summary.get("shot_rule") or {"many_above": 100, "few_below": 20}})


def _tags(summary: dict[str, Any]) -> dict[str, Any]:
    tags = {k: summary.get(k) for k in FALLBACK_TAGS}
    if tags["posthoc_tau"] is None:  # a summary without posthoc_tau applied none
        tags["posthoc_tau"] = 0.0
    return {**tags, **_shot_rule(summary)}


def _with_defaults(raw: dict[str, Any], cls: type) -> dict[str, Any]:
    return {**dataclasses.asdict(cls()), **raw}


def _source_seed(summary: dict[str, Any]) -> tuple[Any, Any]:
    """The stage-1 seed of a DLSA run's features (from their features.json) for display, and for telling
    runs apart (the features folder itself when its record cannot be read)."""
    src = summary.get("feature_source")
    try:
        meta = json.loads((Path(str(src)) / "features.json").read_text())
        if isinstance(meta, dict) and meta.get("seed") is not None:
            return meta["seed"], ("seed", meta["seed"])
    except (OSError, ValueError, TypeError):
        pass
    return None, ("features", str(src))


@dataclass
class Run:
    """One finished run as compare sees it."""

    path: Path
    summary: dict[str, Any]
    kind: str
    identity: dict[str, Any]  # key -> value as configured (see the module docstring)
    seed: list[Any]  # the seed(s): [train.seed], or [stage-1 seed, stage-2 / DLSA seed]
    seed_key: tuple  # what two runs of one configuration must not share

    @property
    def key(self) -> tuple:
        return tuple(sorted((k, norm(v)) for k, v in self.identity.items()))

    @property
    def seed_text(self) -> str:
        return "/".join("?" if s is None else str(s) for s in self.seed)


def read_run(run_dir: PathLike) -> Run:
    """Read a run folder's summary and configuration into a :class:`Run`."""
    path = Path(run_dir)
    s = load_summary(path)
    kind = run_kind(s)
    config = load_config(path)
    ident: dict[str, Any] = {"kind": kind}
    if kind == "dlsa" and config is not None:
        from longtail.stage2.dlsa.config import DLSAConfig

        cfg = flatten(_with_defaults(config, DLSAConfig), "dlsa.")
        ident.update({k: s.get(k) for k in DLSA_TAGS})
        ident.update(_shot_rule(s))
        ident.update(cfg)
        shown, key = _source_seed(s)
        seed, seed_key = [shown, cfg.get("dlsa.seed")], (key, norm(cfg.get("dlsa.seed")))
    elif config is not None and kind in ("train", "decouple"):
        cfg = flatten(_train_config(config))
        ident.update(cfg)
        seed = [cfg.get("train.seed", s.get("seed"))]
        if kind == "decouple":
            from longtail.stage2.decouple import DecoupleConfig

            stage2 = s.get("stage2") if isinstance(s.get("stage2"), dict) else {}
            dcfg = load_yaml_mapping(path / "decouple.yaml", "decouple settings") or stage2.get("config") or {}
            d = flatten(_with_defaults(dcfg, DecoupleConfig), "decouple.")
            ident["decouple.method"] = stage2.get("method", s.get("method"))
            ident.update(d)
            seed.append(d.get("decouple.seed"))
        seed_key = tuple(norm(x) for x in seed)
    else:
        ident.update(_tags(s))
        seed = [s.get("seed")]
        seed_key = (norm(s.get("seed")),)
    for k in IGNORED:
        ident.pop(k, None)
    ident.update({k: s[k] for k in LENGTH if number(s.get(k))})
    return Run(path, s, kind, ident, seed, seed_key)


def _seed_order(run: Run) -> tuple:
    return tuple((not number(x), x if number(x) else 0, str(x)) for x in run.seed)


@dataclass
class Group:
    """The runs (seeds) of one configuration."""

    identity: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""  # a description naming the settings that differ from other groups
    short: str = ""  # only what tells it apart (legends, column heads)

    @property
    def summary(self) -> dict[str, Any]:
        return self.runs[0].summary


#: keys the description (:func:`describe`) shows itself
DESCRIBED = {"kind", "dataset", "data.name", "imbalance", "data.imbalance", "method", "method.name", "decouple.method",
             "backbone", "model.backbone", "epochs", "train.epochs", "completed_epochs", "batch_size",
             "train.batch_size", "augment", "data.augment", "selection", "posthoc_tau", "eval.posthoc_tau"}
METHOD_KEYS = {"kind", "method", "method.name", "decouple.method"}
#: at most this many differing settings are named in a label
LABEL_KEYS = 4


def describe(summary: dict[str, Any]) -> str:
    """A short description, e.g. ``cifar10 ρ=100 · ce · resnet32 · 200 ep · bs 128 · standard · last``."""
    s = summary
    epochs, done = s.get("epochs", "?"), s.get("completed_epochs")
    length = f"{done:g} of {epochs} ep" if number(done) and number(epochs) and done < epochs else f"{epochs} ep"
    parts = [f"{s.get('dataset', '?')} ρ={fmt_imbalance(s.get('imbalance', '?'))}", method_label(s.get("method", "?")),
             str(s.get("backbone", "?")), length, f"bs {s.get('batch_size', '?')}", str(s.get("augment", "?")),
             str(s.get("selection", "?"))]
    tau = s.get("posthoc_tau")
    if number(tau) and tau:
        parts.append(f"τ={tau:g}")
    return " · ".join(parts)


def differing_keys(groups: Sequence[Group]) -> tuple[list[str], list[str]]:
    """The identity keys that differ between groups, in configuration order, in two lists: those whose
    values differ among the groups that have them (or that runs of one kind have or lack), and those that
    only some run kinds have and that are equal wherever they exist (e.g. ``dlsa.*`` beside train runs)."""
    keys: dict[str, None] = {}
    for g in groups:
        keys.update(dict.fromkeys(g.identity))
    differing, kind_only = [], []
    for k in keys:
        values = {norm(g.identity[k]) for g in groups if k in g.identity}
        presence = {g.runs[0].kind: set() for g in groups}
        for g in groups:
            presence[g.runs[0].kind].add(k in g.identity)
        if len(values) > 1 or any(len(p) > 1 for p in presence.values()):
            differing.append(k)
        elif any(k not in g.identity for g in groups):
            kind_only.append(k)
    return differing, kind_only


def _unique(labels: list[str]) -> list[str]:
    return [f"{x} · #{i + 1}" if labels.count(x) > 1 else x for i, x in enumerate(labels)]


def _telling(g: Group, groups: Sequence[Group], diff: list[str]) -> list[str]:
    """The differing keys worth naming in ``g``'s label: those every group has, and those that set ``g``
    apart from a group of the same method (a parameter of one method only is implied by the method)."""
    method = g.summary.get("method")
    same = [h for h in groups if h is not g and h.summary.get("method") == method]
    return [k for k in diff if k in g.identity and (all(k in h.identity for h in groups) or any(
        norm(h.identity.get(k, ABSENT)) != norm(g.identity[k]) for h in same))]


def _label(groups: Sequence[Group], diff: list[str]) -> None:
    method_differs = any(k in METHOD_KEYS for k in diff)
    labels, shorts = [], []
    for g in groups:
        telling = _telling(g, groups, diff)
        extra = [k for k in telling if k not in DESCRIBED]
        named = [f"{k}={show(g.identity[k])}" for k in extra[:LABEL_KEYS]]
        more = [f"… ({len(extra) - LABEL_KEYS} more)"] if len(extra) > LABEL_KEYS else []
        labels.append(" · ".join([describe(g.summary), *named, *more]))
        own = [f"{k}={show(g.identity[k])}" for k in telling if k not in METHOD_KEYS][:3]
        head = [method_label(g.summary.get("method", "?"))] if method_differs or not own else []
        shorts.append(", ".join(head + own))
    for g, label, short in zip(groups, _unique(labels), _unique(shorts)):
        g.label, g.short = label, short


@dataclass
class Comparison:
    """Runs grouped into configurations, and the settings that tell the configurations apart."""

    groups: list[Group]
    differing: list[str]  # settings whose values differ (see :func:`differing_keys`)
    kind_only: list[str]  # settings only some run kinds have, equal wherever they exist


def group_runs(run_dirs: Sequence[PathLike]) -> Comparison:
    """Group runs into configurations (in the order they first appear, seeds sorted) and label them.

    Raises:
        LongtailError: no runs, a run that is missing or unfinished (named), or two runs of the same
            configuration with the same seed (both named).
    """
    if not run_dirs:
        raise LongtailError("compare needs at least one run folder, e.g. runs/cifar10_r100_ce_s0 runs/..._s1")
    groups: dict[tuple, Group] = {}
    for d in run_dirs:
        run = read_run(d)
        group = groups.setdefault(run.key, Group(run.identity))
        for other in group.runs:
            if other.path.resolve() == run.path.resolve():
                raise LongtailError(f"run {run.path} is given twice; pass each run once")
            if other.seed_key == run.seed_key:
                raise LongtailError(
                    f"runs {other.path} and {run.path} have the same configuration and seed {run.seed_text}: "
                    f"no setting tells them apart; pass each seed of a configuration once")
        group.runs.append(run)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=_seed_order)
    differing, kind_only = differing_keys(out)
    _label(out, differing)
    return Comparison(out, differing, kind_only)


def tag_identity(summary: dict[str, Any]) -> tuple:
    """The identity of a run known only by its summary (its tags, kind, shot rule and length), as a tuple."""
    ident: dict[str, Any] = {"kind": run_kind(summary), **_tags(summary)}
    ident.update({k: summary[k] for k in LENGTH if number(summary.get(k))})
    return tuple(sorted((k, norm(v)) for k, v in ident.items()))


def optional_seed(values: Sequence[Any]) -> Optional[Any]:
    """One seed as a scalar, several as a list (JSON)."""
    return values[0] if len(values) == 1 else list(values)
