"""The figure of ``longtail compare --plot``: the configurations side by side, mean ± std over seeds.

Left: per-class accuracy against training count (log x), one colour per configuration, its mean over
seeds as a line and the sample std as a band (none for a single seed). Right: Many / Medium / Few /
Overall bars with std error bars; a group with no class has no bar.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from longtail.errors import LongtailError
from longtail.report.common import fmt_imbalance, number, shot_rule
from longtail.report.figures import ZERO_COUNT, log_count_axis, new_figure, threshold_lines
from longtail.report.identity import Group

BARS = (("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("top1", "Overall"))


def per_class_stats(group: Group) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """A group's training counts and, per class, the mean accuracy over seeds, its sample std (NaN below
    two seeds with a value) and the number of seeds with a value (a class absent from the test set has none).

    Raises:
        LongtailError: the group's runs were trained on different class counts.
    """
    counts = [int(n) for n in group.runs[0].summary["train_counts"]]
    for r in group.runs[1:]:
        if [int(n) for n in r.summary["train_counts"]] != counts:
            raise LongtailError(f"runs {group.runs[0].path} and {r.path} are grouped as one configuration but "
                                f"were trained on different class counts; check their data settings")
    acc = np.array([[float(v) if number(v) else np.nan for v in r.summary["per_class"]] for r in group.runs],
                   dtype=np.float64).reshape(len(group.runs), len(counts))
    n = np.sum(~np.isnan(acc), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no value: NaN, not drawn
        mean = np.nanmean(acc, axis=0)
        std = np.where(n > 1, np.nanstd(acc, axis=0, ddof=1), np.nan)
    return counts, mean, std, n


def group_bars(group: Group) -> dict[str, tuple[Optional[float], Optional[float]]]:
    """``{many|medium|few|top1: (mean, sample std)}``; None for no value (an empty group) or a single one."""
    out = {}
    for key, _ in BARS:
        vals = np.asarray([float(r.summary[key]) for r in group.runs if number(r.summary.get(key))])
        out[key] = (float(vals.mean()) if vals.size else None, float(vals.std(ddof=1)) if vals.size > 1 else None)
    return out


def _title(groups: Sequence[Group]) -> str:
    data = {(g.summary.get("dataset"), fmt_imbalance(g.summary.get("imbalance"))) for g in groups}
    n = len(groups)
    what = f"{n} configuration{'s' if n != 1 else ''}"
    if len(data) == 1:
        (name, rho), = data
        what += f" on {name} ρ={rho}"
    return f"Comparison of {what} (mean ± std over seeds)"


def legend_label(group: Group) -> str:
    n = len(group.runs)
    return f"{group.short} ({n} seed{'s' if n != 1 else ''})"


def comparison_figure(groups: Sequence[Group]) -> Figure:
    """The comparison figure of ``groups`` (see the module docstring), titled, with one legend entry per group."""
    fig = new_figure(_title(groups), (12.5, 4.9))
    ax, axb = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1]})
    all_counts: list[float] = []
    for i, g in enumerate(groups):
        counts, mean, std, _ = per_class_stats(g)
        order = np.argsort(np.asarray(counts), kind="stable")
        x = np.maximum(np.asarray(counts, dtype=np.float64)[order], ZERO_COUNT)
        m, s = mean[order], std[order]
        keep = ~np.isnan(m)
        colour = f"C{i % 10}"
        ax.plot(x[keep], m[keep], marker="o", markersize=3, linewidth=1.2, color=colour, label=legend_label(g))
        band = keep & ~np.isnan(s)
        if band.any():
            lo, hi = np.clip(m - s, 0, 100), np.clip(m + s, 0, 100)  # an accuracy stays in [0, 100]
            ax.fill_between(x[band], lo[band], hi[band], color=colour, alpha=0.18, linewidth=0)
        all_counts += list(x)
    rules = {shot_rule(g.summary) for g in groups}
    if len(rules) == 1:
        rule = rules.pop()
        all_counts += [rule.few_below, rule.many_above]
        log_count_axis(ax, all_counts)
        threshold_lines(ax, rule.many_above, rule.few_below)
    else:
        log_count_axis(ax, all_counts)
    ax.set_ylim(-3, 105)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-class accuracy (line: mean, band: ± std)", fontsize=10)
    ax.grid(True, alpha=0.3)

    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        bars = group_bars(g)
        for j, (key, _) in enumerate(BARS):
            x = j + (i - (len(groups) - 1) / 2) * width
            mean, std = bars[key]
            if mean is None:
                axb.text(x, 1, "—", ha="center", va="bottom", fontsize=8, color=f"C{i % 10}")
                continue
            axb.bar(x, mean, width=width * 0.95, color=f"C{i % 10}",
                    yerr=None if std is None else std, capsize=3 if std is not None else 0,
                    error_kw={"elinewidth": 1})
            if len(groups) <= 4:
                axb.text(x, mean + (std or 0) + 1, f"{mean:.1f}", ha="center", va="bottom", fontsize=6)
    axb.set_xticks(range(len(BARS)), [label for _, label in BARS])
    axb.set_ylim(0, 110)
    axb.set_ylabel("test accuracy (%)")
    axb.set_title("shot groups (bar: mean, whisker: ± std; — = no class)", fontsize=10)
    axb.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(groups), 3), fontsize=8)
    return fig

