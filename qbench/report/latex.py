"""A rendered table as LaTeX: a booktabs ``table`` with the markdown's groups of columns.

One group per set of runs (``ours``, or ``yours`` and ``qbench``) and the paper's, each number
with its Δ to its own FP, then the spec's extra columns; one line per spec row; the caption is
the spec's title with the FP baselines. Values come from the table's long-format frame only
(:mod:`qbench.report.frame`), where a diverged cell has no number: it shows ``---`` like a cell
not run. Needs ``\\usepackage{booktabs}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from qbench.report.frame import PAPER, columns, fp_values, numbers, run_labels
from qbench.report.table import quotes_paper, table_stem

MISSING = "---"
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
           "<": r"\textless{}", ">": r"\textgreater{}"}
UNICODE = {"β": r"$\beta$", "α": r"$\alpha$", "Δ": r"$\Delta$", "±": r"$\pm$", "·": r"$\cdot$",
           "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "—": "---", "–": "--"}


def escape(text: str) -> str:
    """``text`` as LaTeX source: its special characters escaped, Greek letters and math signs in math mode."""
    return "".join(SPECIAL.get(ch) or UNICODE.get(ch) or ch for ch in text)


def _number(value: float, spread: float = math.nan, delta: float = math.nan, digits: int = 2) -> str:
    """``$88.50 \\pm 0.71$ ($-1.50$)``: the value, its spread over seeds and its Δ FP where known."""
    if math.isnan(value):
        return MISSING
    text = f"${value:.{digits}f}" + ("" if math.isnan(spread) else rf" \pm {spread:.{digits}f}") + "$"
    return text if math.isnan(delta) else f"{text} (${delta:+.{digits}f}$)"


@dataclass(frozen=True)
class Group:
    """One group of columns: its heading and where its numbers are in the frame. ``stem`` is a set
    of runs (``<stem>_top1``, ``_spread``, ``_delta_fp``), ``paper``, or an extra column's field."""

    heading: str
    stem: str
    kind: Literal["runs", "paper", "extra"]
    digits: int = 2

    def cell(self, lines: pd.DataFrame, i: int) -> str:
        """The group's text for the ``i``-th column of one row (``lines``: its lines of the frame)."""
        if self.kind == "extra":
            return _number(numbers(lines, self.stem).iloc[i], digits=self.digits)
        spread = numbers(lines, f"{self.stem}_spread").iloc[i] if self.kind == "runs" else math.nan
        return _number(numbers(lines, f"{self.stem}_top1").iloc[i], spread,
                       numbers(lines, f"{self.stem}_delta_fp").iloc[i])


def _groups(spec: dict, labels: list[str]) -> list[Group]:
    """The markdown's groups of columns: each set of runs, the paper (where the spec quotes it), then
    each extra column per set of runs (tagged with the set only where there are several)."""
    tags = [f" {label}" if len(labels) > 1 else "" for label in labels]
    groups = [Group(rf"{label} ($\Delta$ FP)", label, "runs") for label in labels]
    if quotes_paper(spec):
        groups.append(Group(rf"{PAPER} ($\Delta$ FP)", PAPER, "paper"))
    for heading, extra in (spec.get("extra_columns") or {}).items():
        groups += [Group(escape(heading) + tag, f"{label}_{extra['field']}" if tag else extra["field"], "extra",
                         extra.get("digits", 2)) for label, tag in zip(labels, tags)]
    return groups


def _body_line(row: dict, lines: pd.DataFrame, groups: list[Group]) -> str:
    """One spec row: its label, then every group's columns."""
    label = escape(row["label"]) + (" (paper only)" if row.get("select") is None else "")
    return " & ".join([label, *(g.cell(lines, i) for g in groups for i in range(len(lines)))]) + r" \\"


def _header(cols: list[str], groups: list[Group]) -> list[str]:
    """The group headings over their columns, a rule under each, then the column labels."""
    width = len(cols)
    spans = " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{g.heading}}}" for g in groups)
    rules = " ".join(rf"\cmidrule(lr){{{2 + k * width}-{1 + (k + 1) * width}}}" for k in range(len(groups)))
    return [rf" & {spans} \\", rules, " & ".join(["Method", *(escape(c) for c in cols * len(groups))]) + r" \\"]


def _fp_sentence(spec: dict, frame: pd.DataFrame, labels: list[str]) -> str:
    """``FP top-1: ours 84.65; paper 76.1.``, the paper's from the spec (``per row`` where rows have their own)."""
    paper_fp = spec.get("paper_fp")
    if paper_fp is None and any("paper_fp" in row for row in spec["rows"]):
        paper_fp = "per row"
    parts = [f"{label} {', '.join(f'{v:.2f}' for v in fp_values(frame, label)) or MISSING}" for label in labels]
    return f"FP top-1: {'; '.join(parts)}; paper {paper_fp if paper_fp is not None else MISSING}."


def _caption(spec: dict, frame: pd.DataFrame, labels: list[str]) -> str:
    spread = "half range" if spec.get("spread") == "halfrange" else "standard deviation"
    narrowed = spec.get("narrowed") or {}
    selected = ", ".join(f"{k}={v}" for k, v in narrowed.items())
    selected = f" Runs selected beyond the spec: {selected}." if narrowed else ""
    return (f"{escape(spec['title'])}. Top-1 accuracy (\\%) on {escape(spec.get('dataset_label', 'our data'))}; "
            f"{escape(_fp_sentence(spec, frame, labels))}{escape(selected)} Mean $\\pm$ {spread} over seeds where "
            f"several exist; $\\Delta$ FP is each number minus its own FP baseline; {MISSING} marks a cell "
            "without a finished run.")


def render_latex(spec: dict, frame: pd.DataFrame) -> str:
    """The LaTeX source of one rendered table; ``frame`` is what :func:`qbench.report.table.render`
    or ``render_compared`` returned with the markdown."""
    labels = run_labels(frame)
    cols = columns(frame)
    groups = _groups(spec, labels)
    body = [_body_line(row, frame[frame["row"] == row["label"]], groups) for row in spec["rows"]]
    return "\n".join([
        r"% written by qbench-table; needs \usepackage{booktabs}",
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{_caption(spec, frame, labels)}}}",
        rf"\label{{tab:{table_stem(spec)}}}",
        rf"\begin{{tabular}}{{l{'c' * len(cols) * len(groups)}}}",
        r"\toprule",
        *_header(cols, groups),
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]) + "\n"
