"""What every report figure shares: saving as PNG and PDF, the title, the log count axis, the colours.

Figures are standalone :class:`matplotlib.figure.Figure` objects (no pyplot: no global backend switch and
never a window). Functions that draw return the figure; :func:`save` writes it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from longtail.fileio import atomic_write

#: Resolution of the PNG files (the PDF files are vector graphics).
DPI = 200
GROUP_LABELS = {"many": "Many", "medium": "Medium", "few": "Few"}
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
#: a class with no training image is drawn at this count on the log axis
ZERO_COUNT = 0.5


def new_figure(title: str, size: tuple[float, float]) -> Figure:
    """An empty figure with ``title`` as its title (also written into the PNG and PDF metadata)."""
    fig = Figure(figsize=size, layout="constrained")
    fig.suptitle(title, fontsize=11)
    return fig


def title_of(fig: Figure) -> str:
    """The title :func:`new_figure` gave the figure."""
    return fig.get_suptitle()


def save(fig: Figure, png: Path) -> list[Path]:
    """Write ``fig`` as ``png`` (:data:`DPI` dots per inch) and as a PDF of the same stem; return both paths."""
    png = Path(png)
    pdf = png.with_suffix(".pdf")
    title = title_of(fig)
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Title": title}))
    atomic_write(pdf, lambda tmp: fig.savefig(tmp, format="pdf", metadata={"Title": title}))
    return [png, pdf]


def _plain(x: float, _pos=None) -> str:
    if x <= 0:
        return ""
    return f"{round(x)}" if x >= 1 and abs(x - round(x)) < 1e-9 else f"{x:g}"


def log_count_axis(ax, counts: Iterable[float]) -> None:
    """A log x axis for training counts with plain tick labels (1, 10, 100, 1000) and unlabelled minor
    ticks; where the counts span less than about one decade, 2 and 5 times the decades are labelled too."""
    xs = [max(float(c), ZERO_COUNT) for c in counts]
    ax.set_xscale("log")
    if not xs:
        return
    lo, hi = min(xs), max(xs)
    lo_d, hi_d = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    subs = (1.0,) if hi / lo >= 15 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0 ** d for d in range(lo_d, hi_d + 1) for m in subs]
    # a margin on both sides, stretched to the next decade when that is close (it then gets a label)
    left, right = 10.0 ** lo_d, 10.0 ** hi_d
    left = left if 1.2 <= lo / left <= 3 else lo / 1.5
    right = right if 1.2 <= right / hi <= 2 else hi * 1.5
    ax.set_xlim(left, right)
    shown = [t for t in ticks if left <= t <= right]
    if len(shown) < 2:  # a very narrow range: the data's own extremes
        shown = sorted({round(lo), round(hi)})
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(subs) > 1:
        ax.xaxis.set_minor_locator(NullLocator())


def threshold_lines(ax, many_above: int, few_below: int) -> None:
    """The shot-group boundaries of a rule as dashed lines, named in the legend (no label over the data)."""
    label = f"shot-group boundaries: n = {few_below}, {many_above}"
    for x in (few_below, many_above):
        if x > 0:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1, zorder=0, label=label)
            label = None


def texts(fig: Figure) -> list[str]:
    """Every text drawn in ``fig`` (title, axis titles and labels, annotations, legends): for checks."""
    out = [title_of(fig)]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]

