"""Render a table spec (``conf/table/<name>.yaml``) from run records, in the paper's layout.

A spec names the records it covers (``select``: dotted config keys → values), its columns
(``columns``: label → the keys that define the column, e.g. ``{wbits: 2, abits: 2}``) and its
rows (label, ``select`` for our runs — absent for rows that only quote the paper —, and the
paper's numbers per column, with its own ``paper_fp`` where the rows are different networks).
Every cell shows our top-1 — the mean ± spread over seeds where several exist — with its Δ to
our FP, beside the paper's number with its Δ to the paper's FP. ``extra_columns`` (label →
``{field: dotted record key, digits: n}``) adds, per column, the mean of that record field over
the cell's runs (e.g. ``weight_cosine_mean``). A cell without a record shows ``—``, never 0.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from qbench.identity import seed_free_config, seed_free_identity
from qbench.report.records import flatten

MISSING = "—"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    fp: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def narrow_spec(spec: dict, narrowed: dict) -> dict:
    """``spec`` with ``narrowed`` (dotted config key → value) added to its ``select``, e.g. the
    same table rendered from the runs of another recipe. The caption and the command line say so."""
    if not narrowed:
        return spec
    return {**spec, "select": {**spec.get("select", {}), **narrowed}, "narrowed": dict(narrowed)}


def load_spec(name: str, table_dir: Path) -> dict:
    path = table_dir / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in table_dir.glob("*.yaml"))
        raise ValueError(f"unknown table {name!r}; allowed: {', '.join(names)}")
    return yaml.safe_load(path.read_text())


def _matches(flat_config: dict, select: dict) -> bool:
    return all(flat_config.get(k) == v for k, v in select.items())


def _spread(values: list[float], kind: str) -> float:
    if len(values) < 2:
        return 0.0
    if kind == "halfrange":
        return (max(values) - min(values)) / 2
    return statistics.stdev(values)


def _differing_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two configs (present in one only counts)."""
    flat_a, flat_b = flatten(a), flatten(b)
    absent = object()
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, absent) != flat_b.get(k, absent))


def _check_one_experiment(key: tuple[str, str], runs: list[dict]) -> None:
    """Raise if the runs of one cell are not seeds of one experiment (same run identity but
    for the seed, :func:`qbench.identity.seed_free_identity`)."""
    by_identity = {seed_free_identity(r["config"]): r["config"] for r in runs}
    if len(by_identity) > 1:
        first, second = list(by_identity.values())[:2]
        differing = _differing_keys(seed_free_config(first), seed_free_config(second))
        raise ValueError(f"cell {key[1]} of row {key[0]!r} matches runs that differ in "
                         f"{', '.join(differing[:3])}; add the wanted value to the table's select")


def collect(spec: dict, records: list[dict]) -> dict[tuple[str, str], Cell]:
    """Records per (row label, column label). Raises if one cell mixes runs that differ in
    anything but the seed (the spec's ``select`` is then too loose)."""
    cells: dict[tuple[str, str], Cell] = {}
    chosen: dict[tuple[str, str], list[dict]] = {}
    flat = [(r, flatten(r["config"])) for r in records]
    for row in spec["rows"]:
        if row.get("select") is None:
            continue
        for col, col_select in spec["columns"].items():
            want = {**spec.get("select", {}), **row["select"], **col_select}
            chosen[(row["label"], col)] = [r for r, f in flat if _matches(f, want)]
    for key, runs in chosen.items():
        _check_one_experiment(key, runs)
        cell = Cell()
        for r in runs:
            cell.statuses.append(r["status"])
            if r["status"] == "ok":
                cell.values.append(r["metrics"]["top1"])
                cell.fp.append(r["fp"]["top1"])
                cell.records.append(r)
        cells[key] = cell
    return cells


def _fmt(value: float | None, delta: float | None = None, spread: float | None = None) -> str:
    if value is None:
        return MISSING
    text = f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"
    return text if delta is None else f"{text} ({delta:+.2f})"


def _extra_value(cell: Cell | None, key: str) -> float | None:
    """Mean of the record field ``key`` (dotted) over the cell's finished runs that hold it."""
    if cell is None:
        return None
    values = [v for v in (flatten(r).get(key) for r in cell.records) if v is not None]
    return statistics.fmean(values) if values else None


def _edge_caption(records: list[dict]) -> str:
    parts = set()
    for r in records:
        q = r["config"].get("quant", {})
        for edge in ("first_layer", "last_layer"):
            e = q.get(edge)
            if e is None:
                continue
            if not e["quantize"]:
                parts.add(f"{edge.replace('_', ' ')}: float")
            else:
                w = f"W{e['weight_bits']}" if e["weight_bits"] else "W float"
                a = f"A{e['input_bits']}" if e["input_bits"] else "input float"
                parts.add(f"{edge.replace('_', ' ')}: {w}/{a}")
    return "; ".join(sorted(parts)) if parts else "no quantized runs yet"


def render(spec: dict, records: list[dict]) -> tuple[str, pd.DataFrame]:
    """Markdown text and a long-format frame (one line per row × column) of the table."""
    cells = collect(spec, records)
    spread_kind = spec.get("spread", "std")
    used = [r for cell in cells.values() for r in cell.records]  # the captions describe these runs
    fps = sorted({round(r["fp"]["top1"], 2) for r in used if r.get("fp")})
    paper_fp = spec.get("paper_fp")
    columns = list(spec["columns"])
    extras = spec.get("extra_columns") or {}
    header = (["Method"] + [f"{c} ours (Δ FP)" for c in columns] + [f"{c} paper (Δ FP)" for c in columns]
              + [f"{c} {label}" for label in extras for c in columns])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows_out = []
    for row in spec["rows"]:
        ours, theirs, extra_values = [], [], {}
        row_paper_fp = row.get("paper_fp", paper_fp)
        for col in columns:
            cell = cells.get((row["label"], col))
            for label, extra in extras.items():
                extra_values[(label, col)] = _extra_value(cell, extra["field"])
            mean = spread = delta = None
            n = 0
            if cell is not None and cell.values:
                n = len(cell.values)
                mean = statistics.fmean(cell.values)
                spread = _spread(cell.values, spread_kind) if n > 1 else None
                delta = mean - statistics.fmean(cell.fp)
            text = _fmt(mean, delta, spread)
            if cell is not None and not cell.values and "diverged" in cell.statuses:
                text = "diverged"
            ours.append(text)
            paper = (row.get("paper") or {}).get(col)
            paper_delta = paper - row_paper_fp if paper is not None and row_paper_fp is not None else None
            theirs.append(_fmt(paper, paper_delta))
            rows_out.append({"row": row["label"], "column": col, "ours_top1": mean, "ours_spread": spread,
                             "seeds": n, "ours_delta_fp": delta, "paper_top1": paper,
                             "paper_delta_fp": paper_delta,
                             **{extra["field"]: extra_values[(label, col)] for label, extra in extras.items()}})
        extra_texts = [MISSING if extra_values[(label, col)] is None
                       else f"{extra_values[(label, col)]:.{extra.get('digits', 2)}f}"
                       for label, extra in extras.items() for col in columns]
        label = row["label"] + (" (paper only)" if row.get("select") is None else "")
        lines.append("| " + " | ".join([label] + ours + theirs + extra_texts) + " |")
    fp_text = ", ".join(f"{v:.2f}" for v in fps) if fps else MISSING
    if paper_fp is None and any("paper_fp" in row for row in spec["rows"]):
        paper_fp = "per row"
    caption = [
        f"**{spec['title']}**",
        "",
        f"Top-1 accuracy (%) on {spec.get('dataset_label', 'our data')}; our FP top-1: {fp_text}; "
        f"paper's FP top-1: {paper_fp if paper_fp is not None else MISSING} ({spec.get('paper', '')}).",
        f"Precision of edge layers in our runs: {_edge_caption(used)}. "
        f"{spec.get('paper_edge_layers', '')}".rstrip(),
        f"Mean ± {'half range' if spread_kind == 'halfrange' else 'standard deviation'} over seeds "
        "where several exist; Δ FP is each number minus its own FP baseline; — marks a cell not run.",
        "",
    ]
    narrowed = spec.get("narrowed") or {}
    if narrowed:
        caption.insert(-1, "Runs selected beyond the spec (they take precedence over the description above): "
                       + ", ".join(f"{k}={v}" for k, v in narrowed.items()) + ".")
    sweep_args = "".join(f" {k.split('.')[0] if k.endswith('.name') else k}={v}" for k, v in narrowed.items())
    table_args = "".join(f" --select {k}={v}" for k, v in narrowed.items())
    footer = (["", f"Made by: `{spec['command']}{sweep_args}` then `qbench-table {spec['name']}{table_args}`."]
              if spec.get("command") else [])
    return "\n".join(caption + lines + footer) + "\n", pd.DataFrame(rows_out)
