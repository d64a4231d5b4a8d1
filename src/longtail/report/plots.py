"""PNG plots of one run.

Each function takes plain lists, draws on a standalone :class:`matplotlib.figure.Figure` (no pyplot, so
no global backend switch and never a window) and saves a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure

from longtail.data.splits import FEW_BELOW, GROUPS, MANY_ABOVE

GROUP_LABELS = {"many": "Many", "medium": "Medium", "few": "Few"}
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def per_class_vs_count(
    counts: Sequence[int], accuracy: Sequence[Optional[float]], groups: Sequence[str], path: Path
) -> Path:
    """Per-class test accuracy against training count (log x), coloured by shot group.

    Classes absent from the test set (accuracy ``None``) are not drawn.
    """
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for g in GROUPS:
        # A class with zero training images cannot sit on a log axis; draw it at 0.5.
        pts = [(max(n, 0.5), a) for n, a, gg in zip(counts, accuracy, groups) if gg == g and a is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=18, color=GROUP_COLOURS[g], label=f"{GROUP_LABELS[g]} ({len(pts)})", alpha=0.8)
    ax.set_xscale("log")
    # Few n < 20 <= Medium <= 100 < Many: both boundaries drawn where the rule changes.
    for x, text in ((FEW_BELOW, f"n = {FEW_BELOW}"), (MANY_ABOVE, f"n = {MANY_ABOVE}")):
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.text(x, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def shot_groups(values: dict[str, Optional[float]], path: Path) -> Path:
    """Bars for Many / Medium / Few / overall; an empty group (``None``) gets no bar and a "—"."""
    names = ["many", "medium", "few", "top1"]
    labels = ["Many", "Medium", "Few", "Overall"]
    colours = [GROUP_COLOURS["many"], GROUP_COLOURS["medium"], GROUP_COLOURS["few"], "tab:grey"]
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, (name, colour) in enumerate(zip(names, colours)):
        v = values.get(name)
        if v is None:
            ax.text(i, 2, "—\nno class", ha="center", va="bottom", fontsize=9)
            continue
        ax.bar(i, v, color=colour, width=0.6)
        ax.text(i, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    return _save(fig, path)


def reliability(calibration: dict[str, Any], ece: Optional[float], path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal."""
    n = int(calibration["bins"])
    acc = calibration.get("accuracy") or [None] * n
    conf = calibration.get("confidence") or [None] * n
    fig = Figure(figsize=(4.6, 4.6), layout="constrained")
    ax = fig.subplots()
    width = 100.0 / n
    left = [100.0 * i / n for i in range(n)]
    drawn = [(x, a) for x, a in zip(left, acc) if a is not None]
    if drawn:
        xs, ys = zip(*drawn)
        ax.bar(xs, ys, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
               label="accuracy")
    gaps = [(x, 100.0 * c) for x, c in zip(left, conf) if c is not None]
    if gaps:
        xs, ys = zip(*gaps)
        ax.scatter([x + width / 2 for x in xs], ys, marker="_", s=80, color="tab:red", label="mean confidence")
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("confidence (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Reliability (ECE {ece:.2f}%)" if ece is not None else "Reliability (ECE —)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("epoch", i + 1))
            ys.append(float(v))
    return xs, ys


def curves(records: Sequence[dict], path: Path) -> Optional[Path]:
    """Training loss, learning rate and test top-1 (with the groups when logged) over epochs.

    Returns None, drawing nothing, when no record has any of those values.
    """
    loss, lr, top1 = _series(records, "loss"), _series(records, "lr"), _series(records, "top1")
    if not (loss[0] or lr[0] or top1[0]):
        return None
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)
    for ax, (xs, ys), title in ((ax_loss, loss, "training loss"), (ax_lr, lr, "learning rate")):
        if xs:
            ax.plot(xs, ys, color="tab:blue")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    if top1[0]:
        ax_acc.plot(*top1, marker="o", markersize=3, color="black", label="overall")
        for g in GROUPS:
            xs, ys = _series(records, g)
            if xs:
                ax_acc.plot(xs, ys, linestyle="--", color=GROUP_COLOURS[g], label=GROUP_LABELS[g])
        ax_acc.legend(fontsize=8)
    else:
        ax_acc.text(0.5, 0.5, "no evaluation logged", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_title("test top-1 (%)")
    ax_acc.set_xlabel("epoch")
    ax_acc.grid(True, alpha=0.3)
    return _save(fig, path)


def dlsa_stages(stages: Sequence[dict], path: Path) -> Optional[Path]:
    """DLSA "feature evaluation": how head and tail samples move through the stages.

    Left: the share of each shot group's train samples filtered at each stage (the last, regular stage
    keeps what remains). Right: test samples owned and accuracy per stage.
    """
    if not stages:
        return None
    names = [("regular" if st.get("kind") == "regular" else f"stage {st.get('stage')}") for st in stages]
    x = list(range(len(stages)))
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    width = 0.8 / len(GROUPS)
    for j, g in enumerate(GROUPS):
        ys = [((st.get("filtered_share") or {}).get(g)) for st in stages]
        xs = [i + (j - 1) * width for i, y in enumerate(ys) if y is not None]
        ys = [100.0 * y for y in ys if y is not None]
        if ys:
            ax1.bar(xs, ys, width=width, color=GROUP_COLOURS[g], label=GROUP_LABELS[g])
    ax1.set_xticks(x, names)
    ax1.set_ylabel("share of the group's train samples (%)")
    ax1.set_title("where each shot group goes")
    ax1.legend(fontsize=8)
    counts = [st.get("test_count") or 0 for st in stages]
    ax2.bar(x, counts, color="0.75", label="test samples")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("test samples")
    ax3 = ax2.twinx()
    acc = [st.get("accuracy") for st in stages]
    ax3.plot([i for i, a in zip(x, acc) if a is not None], [a for a in acc if a is not None], "o-k", label="accuracy")
    ax3.set_ylabel("accuracy on the stage's test samples (%)")
    ax3.set_ylim(0, 100)
    ax2.set_title("test samples and accuracy per stage")
    return _save(fig, path)
