"""The picture of a rendered table: each number's Δ to its own FP baseline against the table's
columns (the bit-widths, in the table's order; the x axis is labelled by the spec's
``columns_label``, "precision (table column)" by default), so our loss from quantization and the paper's
compare at a glance on one shared y axis.

One line per spec row that has runs (filled markers, error bars for the spread over seeds), the
paper's numbers of that row as hollow markers of the same colour, FP as the dashed line at Δ 0;
each row's absolute FP values are in the legend. Beside qbench's runs (``yours | qbench``), your
runs are solid lines and qbench's dotted. Values come from the table's long-format frame only
(:mod:`qbench.report.frame`). The PNG is written by the Agg backend with matplotlib's default
style and no software tag, so the same frame gives the same bytes under one matplotlib version.
"""
from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from qbench.report.frame import PAPER, columns, fp_values, numbers, rows_with_runs, run_labels

LINE_STYLES = ("-", ":")  # the first set of runs, the second (qbench's beside yours)
MARKERS = ("o", "s")
PAPER_MARKER = "D"
FP_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.2}
DPI = 100
WIDTH_IN = 9.0
AXES_HEIGHT_IN = 4.6
LEGEND_LINE_IN = 0.24
DODGE = 0.06  # horizontal offset between rows at one column, so error bars do not hide each other
PNG_METADATA_KEY = "matplotlib"  # the version that drew it: another one may place pixels differently


@contextmanager
def _default_style() -> Iterator[None]:
    """matplotlib's own defaults while drawing and saving: a user's matplotlibrc must not change
    the committed pictures."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        yield


def _colours(n: int) -> list:
    """``n`` distinct colours, the same row always the same colour."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _offsets(n: int) -> np.ndarray:
    """The horizontal offset of each of ``n`` rows around its column's position."""
    return (np.arange(n) - (n - 1) / 2) * DODGE


def _fp_label(frame: pd.DataFrame, labels: list[str]) -> str:
    """``FP: ours 84.65; paper 76.10`` for the lines of one row (several values where its cells differ)."""
    fps = {label: fp_values(frame, label) for label in [*labels, PAPER]}
    parts = [f"{label} {' / '.join(f'{v:.2f}' for v in values)}" for label, values in fps.items() if values]
    return f"FP: {'; '.join(parts)}" if parts else "FP: —"


def _draw_runs(ax: Axes, x: np.ndarray, lines: pd.DataFrame, label: str, style: int, colour) -> None:
    """One set of runs of one row: Δ FP per column, filled markers, error bars where seeds spread;
    nothing where this set has no finished run in the row."""
    delta = numbers(lines, f"{label}_delta_fp").to_numpy()
    if np.isnan(delta).all():
        return
    spread = numbers(lines, f"{label}_spread").to_numpy()
    row = lines["row"].iloc[0]
    ax.plot(x, delta, color=colour, linestyle=LINE_STYLES[style], marker=MARKERS[style], markersize=6,
            linewidth=1.8, gid=f"{label}|{row}")
    spread_shown = ~np.isnan(spread) & ~np.isnan(delta)
    if spread_shown.any():
        ax.errorbar(x[spread_shown], delta[spread_shown], yerr=spread[spread_shown], fmt="none",
                    ecolor=colour, elinewidth=1.2, capsize=4, label=f"{label} spread|{row}")


def _draw_paper(ax: Axes, x: np.ndarray, lines: pd.DataFrame, colour) -> bool:
    """The paper's Δ to its FP for one row as hollow markers; whether it had any."""
    delta = numbers(lines, f"{PAPER}_delta_fp").to_numpy()
    if np.isnan(delta).all():
        return False
    ax.plot(x, delta, color=colour, linestyle="none", marker=PAPER_MARKER, markersize=8,
            markerfacecolor="none", markeredgewidth=1.6, gid=f"{PAPER}|{lines['row'].iloc[0]}")
    return True


def _key(labels: list[str], spread_kind: str, paper_drawn: bool) -> list[Line2D]:
    """Legend entries for the styles: each set of runs, the paper, FP."""
    black = "0.15"
    spread = "half range" if spread_kind == "halfrange" else "standard deviation"
    key = [Line2D([], [], color=black, linestyle=LINE_STYLES[i], marker=MARKERS[i],
                  label=f"{label} (filled): mean Δ to its own FP; bars: ± {spread} over seeds")
           for i, label in enumerate(labels)]
    if paper_drawn:
        key.append(Line2D([], [], color=black, linestyle="none", marker=PAPER_MARKER, markerfacecolor="none",
                          label="paper (hollow): Δ to the paper's FP"))
    return key + [Line2D([], [], **FP_STYLE, label="FP (Δ = 0)")]


def _row_entry(frame_row: pd.DataFrame, labels: list[str], colour) -> Line2D:
    """The legend entry of one row: its colour, its label and its absolute FP values."""
    text = f"{frame_row['row'].iloc[0]} — {_fp_label(frame_row, labels)}"
    return Line2D([], [], color=colour, marker="o", label=textwrap.shorten(text, 110))


def plot_table(spec: dict, frame: pd.DataFrame) -> Figure:
    """The figure of one rendered table (see the module docstring); ``frame`` is what
    :func:`qbench.report.table.render` or ``render_compared`` returned with the markdown."""
    labels = run_labels(frame)
    cols = columns(frame)
    rows = rows_with_runs(frame, labels)
    colours = _colours(len(rows))
    with _default_style():
        fig = Figure(figsize=(WIDTH_IN, AXES_HEIGHT_IN + LEGEND_LINE_IN * (len(rows) + len(labels) + 4)),
                     dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.axhline(0.0, **FP_STYLE, gid="fp")
        paper_drawn = False
        for row, colour, offset in zip(rows, colours, _offsets(len(rows))):
            lines = frame[frame["row"] == row]
            x = np.array([cols.index(c) for c in lines["column"]], dtype=float) + offset
            for style, label in enumerate(labels):
                _draw_runs(ax, x, lines, label, style, colour)
            paper_drawn = _draw_paper(ax, x, lines, colour) or paper_drawn
        if not rows:
            ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_xlim(-0.5, len(cols) - 0.5)
        ax.set_xlabel(spec.get("columns_label", "precision (table column)"))
        ax.set_ylabel("top-1 Δ to FP (percentage points)")
        ax.grid(axis="y", color="0.9")
        ax.set_title("\n".join(textwrap.wrap(spec["title"], 90)) + "\ntop-1 minus its own FP baseline",
                     fontsize=11)
        handles = [_row_entry(frame[frame["row"] == row], labels, c) for row, c in zip(rows, colours)]
        key = _key(labels, spec.get("spread", "std"), paper_drawn)
        fig.legend(handles=handles + key, loc="outside lower center", ncols=1, fontsize=9, frameon=False)
    return fig


def write_png(fig: Figure, path: Path) -> None:
    """Save ``fig`` as a PNG whose bytes depend only on the figure and the matplotlib version."""
    with _default_style():
        fig.savefig(path, format="png", dpi=DPI,
                    metadata={"Software": None, PNG_METADATA_KEY: matplotlib.__version__})
