"""The figures of one run's report.

Each function takes plain values and a title and returns a :class:`~matplotlib.figure.Figure` (or None
when there is nothing to draw); :func:`longtail.report.figures.save` writes it as PNG and PDF. A figure
never holds an empty panel: a panel is made only for a series that was logged.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from longtail.data.splits import GROUPS, ShotRule
from longtail.report.common import number
from longtail.report.figures import GROUP_COLOURS, GROUP_LABELS, ZERO_COUNT, log_count_axis, new_figure, threshold_lines

#: at most this many classes get their name written next to their point
MAX_NAMED_CLASSES = 20


def per_class_vs_count(counts: Sequence[int], accuracy: Sequence[Optional[float]], groups: Sequence[str],
                       title: str, rule: Optional[ShotRule] = None, names: Optional[Sequence[str]] = None) -> Figure:
    """Per-class test accuracy against training count (log x), coloured by shot group, with the rule's
    boundaries (``rule``: the protocol's 100 / 20). Classes absent from the test set (accuracy ``None``) are
    not drawn; with at most :data:`MAX_NAMED_CLASSES` classes each point carries its class name."""
    rule = rule or ShotRule()
    fig = new_figure(title, (7.2, 4.4))
    ax = fig.subplots()
    ax.set_title("per-class accuracy against training count", fontsize=10)
    for g in GROUPS:
        pts = [(max(n, ZERO_COUNT), a) for n, a, gg in zip(counts, accuracy, groups) if gg == g and a is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=22, color=GROUP_COLOURS[g], label=f"{GROUP_LABELS[g]} ({len(pts)})", alpha=0.85,
                       zorder=3)
    if names is not None and len(counts) <= MAX_NAMED_CLASSES:
        for n, a, name in zip(counts, accuracy, names):
            if a is not None:
                ax.annotate(str(name), (max(n, ZERO_COUNT), a), xytext=(4, 3), textcoords="offset points",
                            fontsize=7, color="0.25")
    log_count_axis(ax, [*counts, rule.few_below, rule.many_above])
    threshold_lines(ax, rule.many_above, rule.few_below)
    ax.set_ylim(-3, 105)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, title="shot group (classes)", title_fontsize=8)
    return fig


def shot_groups(values: dict[str, Optional[float]], shots: dict[str, int], title: str) -> Figure:
    """Bars for Many / Medium / Few / overall; an empty group (``None``) gets no bar and "no class"."""
    names = ["many", "medium", "few", "top1"]
    labels = [f"{GROUP_LABELS[g]}\n({_classes(shots.get(g, 0))})" for g in GROUPS] + ["Overall"]
    colours = [GROUP_COLOURS["many"], GROUP_COLOURS["medium"], GROUP_COLOURS["few"], "tab:grey"]
    fig = new_figure(title, (5.6, 4.0))
    ax = fig.subplots()
    ax.set_title("accuracy per shot group", fontsize=10)
    for i, (name, colour) in enumerate(zip(names, colours)):
        v = values.get(name)
        if not number(v):
            ax.text(i, 2, "—\nno class", ha="center", va="bottom", fontsize=9)
            continue
        ax.bar(i, v, color=colour, width=0.6)
        ax.text(i, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def reliability(calibration: dict[str, Any], ece: Optional[float], title: str) -> Figure:
    """Reliability diagram (accuracy per confidence bin against the diagonal) above a histogram of the
    test samples per bin, each bar labelled with its count."""
    n = int(calibration["bins"])
    acc = calibration.get("accuracy") or [None] * n
    conf = calibration.get("confidence") or [None] * n
    count = calibration.get("count") or [None] * n
    fig = new_figure(title, (5.0, 6.0))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    width = 100.0 / n
    left = [100.0 * i / n for i in range(n)]
    drawn = [(x, a) for x, a in zip(left, acc) if number(a)]
    if drawn:
        xs, ys = zip(*drawn)
        ax.bar(xs, ys, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
               label="accuracy")
    gaps = [(x, 100.0 * c) for x, c in zip(left, conf) if number(c)]
    if gaps:
        xs, ys = zip(*gaps)
        ax.scatter([x + width / 2 for x in xs], ys, marker="_", s=80, color="tab:red", label="mean confidence",
                   zorder=3)
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"reliability (ECE {ece:.2f}%)" if number(ece) else "reliability (ECE —)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    nums = [int(c) if number(c) else 0 for c in count]
    axc.bar(left, nums, width=width, align="edge", color="0.7", edgecolor="black", linewidth=0.5)
    top = max(nums) if nums and max(nums) > 0 else 1
    for x, c in zip(left, nums):
        if c > 0:
            axc.text(x + width / 2, c + 0.03 * top, str(c), ha="center", va="bottom", fontsize=6)
    axc.set_ylim(0, top * 1.3)
    axc.set_ylabel("test samples")
    axc.set_xlabel("confidence (%)")
    return fig


def _series(records: Sequence[dict], key: str, x_key: str = "epoch") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if number(v):
            x = r.get(x_key)
            xs.append(x if number(x) else i + 1)
            ys.append(float(v))
    return xs, ys


def _panels(fig: Figure, count: int) -> list:
    axes = fig.subplots(1, count, squeeze=False)[0]
    return list(axes)


def is_dlsa_log(records: Sequence[dict]) -> bool:
    """True for a DLSA run's log: rows carry the ``stage`` and ``phase`` they belong to."""
    return any("stage" in r and "phase" in r for r in records)


def curves(records: Sequence[dict], title: str) -> Optional[Figure]:
    """Training curves: a DLSA log per stage and phase (:func:`dlsa_curves`), otherwise training loss,
    learning rate and test accuracy (with the shot groups when logged) over epochs; only the panels whose
    series were logged. None when no record has any of them."""
    if is_dlsa_log(records):
        return dlsa_curves(records, title)
    series = [(key, name, _series(records, key)) for key, name in
              (("loss", "training loss"), ("lr", "learning rate"), ("top1", "test accuracy (%)"))]
    series = [s for s in series if s[2][0]]
    if not series:
        return None
    fig = new_figure(title, (3.8 * len(series) + 0.6, 3.6))
    for ax, (key, name, (xs, ys)) in zip(_panels(fig, len(series)), series):
        if key == "top1":
            ax.plot(xs, ys, marker="o", markersize=3, color="black", label="overall")
            for g in GROUPS:
                gx, gy = _series(records, g)
                if gx:
                    ax.plot(gx, gy, linestyle="--", marker=".", color=GROUP_COLOURS[g], label=GROUP_LABELS[g])
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, ys, color="tab:blue", label=name)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    return fig


def _stage_name(stage: Any, phase: str) -> str:
    return "regular" if phase == "regular" else f"stage {stage}"


def dlsa_series(records: Sequence[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """A DLSA log split into its series: ``{panel: {line: (epochs, values)}}`` for the panels
    ``flow loss``, ``good clusters`` (flow), ``classifier loss`` and ``classifier val top-1 (%)``; one line
    per stage (``stage 1`` ...) and one for the ``regular`` classifier. Empty panels are left out."""
    spec = (("flow loss", ("flow",), "loss"), ("good clusters", ("flow",), "good_clusters"),
            ("classifier loss", ("cac", "regular"), "loss"),
            ("classifier val top-1 (%)", ("cac", "regular"), "val_top1"))
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for panel, phases, key in spec:
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for r in records:
            if r.get("phase") not in phases or not number(r.get(key)):
                continue
            xs, ys = lines.setdefault(_stage_name(r.get("stage"), str(r.get("phase"))), ([], []))
            xs.append(r["epoch"] if number(r.get("epoch")) else len(xs) + 1)
            ys.append(float(r[key]))
        if lines:
            out[panel] = dict(sorted(lines.items(), key=lambda kv: (kv[0] == "regular", kv[0])))
    return out


def dlsa_curves(records: Sequence[dict], title: str) -> Optional[Figure]:
    """A DLSA run's curves: each flow and classifier trained in its own stage is its own line."""
    panels = dlsa_series(records)
    if not panels:
        return None
    cols = min(len(panels), 2)
    rows = (len(panels) + cols - 1) // cols
    fig = new_figure(title, (5.2 * cols, 3.4 * rows))
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    for ax, (panel, lines) in zip(axes, panels.items()):
        for i, (name, (xs, ys)) in enumerate(lines.items()):
            colour = "black" if name == "regular" else f"C{i}"
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, color=colour, label=name)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch of the stage")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel == "good clusters":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def dlsa_stages(stages: Sequence[dict], title: str) -> Optional[Figure]:
    """DLSA "feature evaluation": how head and tail samples move through the stages.

    Left: the share of each shot group's train samples filtered at each stage (the last, regular stage
    keeps what remains; left out when no stage records it). Right: test samples owned and accuracy per stage.
    """
    if not stages:
        return None
    names = [("regular" if st.get("kind") == "regular" else f"stage {st.get('stage')}") for st in stages]
    x = list(range(len(stages)))
    shares = any(number((st.get("filtered_share") or {}).get(g)) for st in stages for g in GROUPS)
    fig = new_figure(title, (10, 4.0) if shares else (5.4, 4.0))
    ax1, ax2 = fig.subplots(1, 2) if shares else (None, fig.subplots())
    width = 0.8 / len(GROUPS)
    for j, g in enumerate(GROUPS if shares else ()):
        ys = [((st.get("filtered_share") or {}).get(g)) for st in stages]
        xs = [i + (j - 1) * width for i, y in enumerate(ys) if number(y)]
        ys = [100.0 * y for y in ys if number(y)]
        if ys:
            ax1.bar(xs, ys, width=width, color=GROUP_COLOURS[g], label=GROUP_LABELS[g])
    if shares:
        ax1.set_xticks(x, names)
        ax1.set_ylabel("share of the group's train samples (%)")
        ax1.set_title("where each shot group goes", fontsize=10)
        ax1.legend(fontsize=8)
    counts = [st.get("test_count") or 0 for st in stages]
    ax2.bar(x, counts, color="0.75", label="test samples")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("test samples")
    ax3 = ax2.twinx()
    acc = [st.get("accuracy") for st in stages]
    ax3.plot([i for i, a in zip(x, acc) if number(a)], [a for a in acc if number(a)], "o-k", label="accuracy")
    ax3.set_ylabel("accuracy on the stage's test samples (%)")
    ax3.set_ylim(0, 100)
    ax2.set_title("test samples and accuracy per stage", fontsize=10)
    return fig


def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"
