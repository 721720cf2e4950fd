"""Reading the long-format frame of a rendered table (what :func:`qbench.report.table.render` and
``render_compared`` return, the table's CSV): which sets of runs it holds, their numbers, their FP.

The frame has one line per spec row × column, ``row`` and ``column`` in the spec's order, and per
set of runs (``ours``, or ``yours`` and ``qbench``) ``<label>_top1``, ``<label>_spread`` and
``<label>_delta_fp``; the paper's numbers are ``paper_top1`` and ``paper_delta_fp``.
"""
from __future__ import annotations

import pandas as pd

PAPER = "paper"
DELTA_SUFFIX = "_delta_fp"


def run_labels(frame: pd.DataFrame) -> list[str]:
    """The sets of runs in ``frame``, in the table's order: ``["ours"]`` or ``["yours", "qbench"]``."""
    return [c.removesuffix(DELTA_SUFFIX) for c in frame.columns
            if c.endswith(DELTA_SUFFIX) and c != PAPER + DELTA_SUFFIX]


def numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as floats, NaN where a cell has no number (not run, diverged)."""
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def fp_values(frame: pd.DataFrame, label: str) -> list[float]:
    """The distinct FP top-1 values (2 decimals) behind ``label``'s numbers in ``frame``: each
    cell's top-1 minus its Δ to FP. ``label`` is a set of runs or ``paper``."""
    fp = numbers(frame, f"{label}_top1") - numbers(frame, label + DELTA_SUFFIX)
    return sorted({round(v, 2) for v in fp.dropna()})


def rows_with_runs(frame: pd.DataFrame, labels: list[str]) -> list[str]:
    """The rows, in the spec's order, where any of ``labels`` has a finished run."""
    has_run = pd.concat([numbers(frame, f"{label}_top1").notna() for label in labels], axis=1).any(axis=1)
    return list(dict.fromkeys(frame.loc[has_run, "row"]))


def columns(frame: pd.DataFrame) -> list[str]:
    """The table's columns in the spec's order."""
    return list(dict.fromkeys(frame["column"]))
