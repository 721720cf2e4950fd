"""Render a table spec (``conf/table/<name>.yaml``) from run records, in the paper's layout.

A spec names the records it covers (``select``: dotted config keys → values), its columns
(``columns``: label → the keys that define the column, e.g. ``{wbits: 2, abits: 2}``) and its
rows (label, ``select`` for our runs — absent for rows that only quote the paper —, and the
paper's numbers per column, with its own ``paper_fp`` where the rows are different networks).
Every cell shows our top-1 — the mean ± spread over seeds where several exist — with its Δ to
our FP, beside the paper's number with its Δ to the paper's FP. ``extra_columns`` (label →
``{field: dotted record key, digits: n}``) adds, per column, the mean of that record field over
the cell's runs that hold it, saying "(n of m runs)" where that is not all of them (e.g.
``weight_cosine_mean``; a list field counts its items, e.g. ``steps_at_floor``: the layers whose
learned step went dead). A cell without a record shows ``—``, never 0.
Where one model's runs in a set use several FP baselines (:class:`Baseline`), the caption says so
and each cell that used a less common one is marked (``†``, ``‡``, …); the CSV names every cell's
baselines (``<set>_baselines``).
``claims`` (the paper's claims as checks, :mod:`qbench.report.claims`) are judged on the same
cells and listed under the table (:mod:`qbench.report.verdicts`); a row's ``paper_spread`` is the
paper's spread over seeds per column, where it gives one.

:func:`render` is qbench's published table (``ours`` beside the paper), what results/tables
holds; :func:`render_compared` puts your runs (``yours``) beside qbench's (``qbench``) and the paper.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from qbench.identity import seed_free_config, seed_free_identity
from qbench.report.records import flatten
from qbench.report.stats import seed_spread
from qbench.report.text import plural
from qbench.report.verdicts import claims_section

MISSING = "—"
PUBLISHED_RECORDS = "results/published"  # qbench's own records, read-only: the committed tables
PUBLISHED_SWEEP_FLAGS = f" paths.records_dir={PUBLISHED_RECORDS}"
PUBLISHED_TABLE_FLAGS = " --published"
SHORT_HASH = 8  # characters of a baseline's hash shown in captions and the CSV
MARKERS = "†‡§¶‖"  # marks of the less common baselines, doubled past the fifth


@dataclass
class Cell:
    """One row × column: every run's record (``runs``: finished, diverged or failed); the finished
    ones (``records``), their top-1 (``values``) and FP top-1 (``fp``) follow from them."""

    runs: list[dict] = field(default_factory=list)

    @property
    def statuses(self) -> list[str]:
        return [r["status"] for r in self.runs]

    @property
    def records(self) -> list[dict]:
        return [r for r in self.runs if r["status"] == "ok"]

    @property
    def values(self) -> list[float]:
        return [r["metrics"]["top1"] for r in self.records]

    @property
    def fp(self) -> list[float]:
        return [r["fp"]["top1"] for r in self.records]


def narrow_spec(spec: dict, narrowed: dict) -> dict:
    """``spec`` with ``narrowed`` (dotted config key → value) added to its ``select``, e.g. the
    same table rendered from the runs of another recipe. The caption and the command line say so."""
    if not narrowed:
        return spec
    return {**spec, "select": {**spec.get("select", {}), **narrowed}, "narrowed": dict(narrowed)}


def table_stem(spec: dict) -> str:
    """The file name of the spec's table without suffix: ``NAME``, ``NAME--VALUE`` per narrowed value."""
    return spec["name"] + "".join(f"--{value}" for value in (spec.get("narrowed") or {}).values())


def quotes_paper(spec: dict) -> bool:
    """Whether any row of the spec quotes a paper number: a table without any (a protocol
    measurement of qbench's own) has no paper columns."""
    return any(row.get("paper") for row in spec["rows"])


def load_spec(name: str, table_dir: Path) -> dict:
    path = table_dir / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in table_dir.glob("*.yaml"))
        raise ValueError(f"unknown table {name!r}; allowed: {', '.join(names)}")
    return yaml.safe_load(path.read_text())


def _matches(flat_config: dict, select: dict) -> bool:
    return all(flat_config.get(k) == v for k, v in select.items())


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
        cells[key] = Cell(runs)
    return cells


def _fmt(value: float | None, delta: float | None = None, spread: float | None = None) -> str:
    if value is None:
        return MISSING
    text = f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"
    return text if delta is None else f"{text} ({delta:+.2f})"


@dataclass(frozen=True)
class Extra:
    """An extra column's value in one cell: the mean over the ``runs`` of its ``of`` finished runs
    that hold the field."""

    mean: float
    runs: int
    of: int

    def text(self, digits: int) -> str:
        """The mean, with how many runs it covers where that is not all of the cell's."""
        covered = "" if self.runs == self.of else f" ({self.runs} of {self.of} runs)"
        return f"{self.mean:.{digits}f}{covered}"


def _extra_value(cell: Cell | None, key: str) -> Extra | None:
    """Mean of the record field ``key`` (dotted) over the cell's finished runs that hold it; a
    list counts as its length."""
    if cell is None:
        return None
    values = [len(v) if isinstance(v, list) else v
              for v in (flatten(r).get(key) for r in cell.records) if v is not None]
    return Extra(statistics.fmean(values), len(values), len(cell.records)) if values else None


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


@dataclass(frozen=True)
class Baseline:
    """The FP baseline a run's Δ is measured against, identified by its weights' hash, else its
    baseline key, else (records without either) its FP top-1; ``short`` names it in captions and
    the CSV. Two baselines are equal when their identities are."""

    identity: str
    short: str = field(compare=False)
    top1: float = field(compare=False)


def baseline_of(record: dict) -> Baseline:
    """The FP baseline of one finished run (see :class:`Baseline`)."""
    fp = record["fp"]
    for key in ("weights_sha256", "baseline_key"):
        if fp.get(key):
            return Baseline(f"{key}:{fp[key]}", str(fp[key])[:SHORT_HASH], fp["top1"])
    return Baseline(f"top1:{fp['top1']}", f"top1={fp['top1']:.2f}", fp["top1"])


def _model(record: dict) -> str:
    return str(record["config"].get("model", {}).get("name"))


@dataclass(frozen=True)
class Mixed:
    """One model whose runs in one set use several FP baselines: each with its number of runs, the
    most common first, and the marker of every other one."""

    model: str
    counts: list[tuple[Baseline, int]]
    markers: dict[Baseline, str]


def _marker(index: int) -> str:
    return MARKERS[index % len(MARKERS)] * (index // len(MARKERS) + 1)


def _mixed(cells: dict[tuple[str, str], Cell], first_marker: int) -> list[Mixed]:
    """The models whose finished runs in ``cells`` use several baselines; the less common baselines
    get markers from the ``first_marker``-th on, in the table's order (ties: the first seen is the
    more common)."""
    per_model: dict[str, Counter[Baseline]] = {}
    for r in _used(cells):
        per_model.setdefault(_model(r), Counter())[baseline_of(r)] += 1
    mixed = []
    for model, counter in per_model.items():
        if len(counter) > 1:
            counts = counter.most_common()
            markers = {b: _marker(first_marker + i) for i, (b, _) in enumerate(counts[1:])}
            first_marker += len(markers)
            mixed.append(Mixed(model, counts, markers))
    return mixed


def _mixes(cells: list[dict[tuple[str, str], Cell]]) -> list[list[Mixed]]:
    """:func:`_mixed` of each set of runs, every marker distinct across the table."""
    mixes: list[list[Mixed]] = []
    for c in cells:
        mixes.append(_mixed(c, sum(len(m.markers) for ms in mixes for m in ms)))
    return mixes


def _cell_marker(cell: Cell | None, mixed: list[Mixed]) -> str:
    """The markers of the less common baselines the cell's finished runs used; empty if none."""
    used = {(_model(r), baseline_of(r)) for r in cell.records} if cell is not None else set()
    return "".join(marker for m in mixed for b, marker in m.markers.items() if (m.model, b) in used)


def _mix_sentence(owner: str, mixed: Mixed) -> str:
    """The caption's sentence on one model whose runs use several baselines: each with its FP top-1,
    its number of runs and the cells that used it (unmarked: the most common only)."""
    (common, n_common), *others = mixed.counts
    parts = [f"`{common.short}` (FP top-1 {common.top1:.2f}, {plural(n_common, 'run')}) in unmarked cells"]
    parts += [f"`{b.short}` (FP top-1 {b.top1:.2f}, {plural(n, 'run')}) in cells marked {mixed.markers[b]}"
              for b, n in others]
    return (f"In this table {owner} {mixed.model} runs use {len(parts)} FP baselines: "
            f"{', '.join(parts[:-1])} and {parts[-1]}.")


@dataclass(frozen=True)
class Runs:
    """One set of runs shown in a table: its column label (``ours``, ``yours``, ``qbench``), the
    possessive the caption uses for it, its records and, where the caption says it, their folder."""

    label: str
    owner: str
    records: list[dict]
    read_from: str | None = None


@dataclass(frozen=True)
class Shown:
    """What one set of runs puts in one table cell."""

    text: str
    mean: float | None = None
    spread: float | None = None
    seeds: int = 0
    delta: float | None = None
    baselines: str | None = None


def _shown(cell: Cell | None, spread_kind: str, marker: str) -> Shown:
    """The cell's mean ± spread over seeds and its Δ to the runs' FP, then ``marker`` (its less
    common baselines) unless empty; ``diverged`` when every run diverged; ``—`` without a finished
    run. ``baselines``: the short names of the finished runs' baselines, comma-separated."""
    if cell is None or not cell.values:
        diverged = cell is not None and "diverged" in cell.statuses
        return Shown("diverged" if diverged else MISSING)
    n = len(cell.values)
    mean = statistics.fmean(cell.values)
    spread = seed_spread(cell.values, spread_kind) if n > 1 else None
    delta = mean - statistics.fmean(cell.fp)
    text = _fmt(mean, delta, spread) + (f" {marker}" if marker else "")
    baselines = ",".join(dict.fromkeys(baseline_of(r).short for r in cell.records))
    return Shown(text, mean, spread, n, delta, baselines)


def _fp_text(cells: dict[tuple[str, str], Cell]) -> str:
    """The distinct FP top-1 values of the runs in ``cells``."""
    fps = sorted({round(r["fp"]["top1"], 2) for cell in cells.values() for r in cell.records if r.get("fp")})
    return ", ".join(f"{v:.2f}" for v in fps) if fps else MISSING


def _used(cells: dict[tuple[str, str], Cell]) -> list[dict]:
    """The finished runs shown in the table: the captions describe these, not the whole select."""
    return [r for cell in cells.values() for r in cell.records]


def _caption(spec: dict, sources: list[Runs], cells: list[dict[tuple[str, str], Cell]],
             mixes: list[list[Mixed]]) -> list[str]:
    """Title, data, every FP baseline (each set of runs' and the paper's), the models whose runs
    mix baselines, edge-layer precision, the records folders where given, the spread used and the
    selection beyond the spec."""
    paper_fp = spec.get("paper_fp")
    if paper_fp is None and any("paper_fp" in row for row in spec["rows"]):
        paper_fp = "per row"
    fp_parts = "".join(f"{runs.owner} FP top-1: {_fp_text(c)}; " for runs, c in zip(sources, cells))
    edges = " ".join(f"Precision of edge layers in {runs.owner} runs: {_edge_caption(_used(c))}."
                     for runs, c in zip(sources, cells))
    spread_kind = spec.get("spread", "std")
    caption = [
        f"**{spec['title']}**",
        "",
        (f"Top-1 accuracy (%) on {spec.get('dataset_label', 'our data')}; {fp_parts}"
         f"paper's FP top-1: {paper_fp if paper_fp is not None else MISSING} ({spec.get('paper', '')})."),
    ]
    mixed = " ".join(_mix_sentence(runs.owner, m) for runs, ms in zip(sources, mixes) for m in ms)
    if mixed:
        caption.append(mixed)
    caption.append(f"{edges} {spec.get('paper_edge_layers', '')}".rstrip())
    folders = [f"{runs.owner} runs from `{runs.read_from}`" for runs in sources if runs.read_from]
    if folders:
        caption.append(f"Records read: {', '.join(folders)}.")
    caption.append(f"Mean ± {'half range' if spread_kind == 'halfrange' else 'standard deviation'} over seeds "
                   "where several exist; Δ FP is each number minus its own FP baseline; — marks a cell not run.")
    narrowed = spec.get("narrowed") or {}
    if narrowed:
        caption.append("Runs selected beyond the spec (they take precedence over the description above): "
                       + ", ".join(f"{k}={v}" for k, v in narrowed.items()) + ".")
    return caption + [""]


def commands(spec: dict, sweep_flags: str, table_flags: str) -> tuple[str, str]:
    """The sweep (the spec's ``command``) and the ``qbench-table`` command that make the spec's
    table, each with the spec's narrowed values and the given flags."""
    narrowed = spec.get("narrowed") or {}
    sweep_args = "".join(f" {k.split('.')[0] if k.endswith('.name') else k}={v}" for k, v in narrowed.items())
    table_args = "".join(f" --select {k}={v}" for k, v in narrowed.items())
    return f"{spec['command']}{sweep_args}{sweep_flags}", f"qbench-table {spec['name']}{table_flags}{table_args}"


def published_commands(spec: dict) -> tuple[str, str]:
    """:func:`commands` of the committed table: the sweep into, and the render from, ``results/published``."""
    return commands(spec, PUBLISHED_SWEEP_FLAGS, PUBLISHED_TABLE_FLAGS)


def _made_by(spec: dict, sweep_flags: str, table_flags: str) -> list[str]:
    """The footer: the sweep and the ``qbench-table`` command that make this file."""
    if not spec.get("command"):
        return []
    sweep, table = commands(spec, sweep_flags, table_flags)
    return ["", f"Made by: `{sweep}` then `{table}`."]


@dataclass(frozen=True)
class Entry:
    """One column of one row: what each set of runs shows, the paper's number and Δ, and each set's
    extra fields (``extras[source][i]`` for the spec's i-th extra column)."""

    shown: list[Shown]
    paper: float | None
    paper_delta: float | None
    extras: list[list[Extra | None]]


def _entry(spec: dict, row: dict, col: str, cells: list[dict[tuple[str, str], Cell]],
           mixes: list[list[Mixed]]) -> Entry:
    run_cells = [c.get((row["label"], col)) for c in cells]
    extras = (spec.get("extra_columns") or {}).values()
    paper = (row.get("paper") or {}).get(col)
    paper_fp = row.get("paper_fp", spec.get("paper_fp"))
    return Entry(shown=[_shown(cell, spec.get("spread", "std"), _cell_marker(cell, mixed))
                        for cell, mixed in zip(run_cells, mixes)],
                 paper=paper, paper_delta=paper - paper_fp if paper is not None and paper_fp is not None else None,
                 extras=[[_extra_value(cell, e["field"]) for e in extras] for cell in run_cells])


def _header(spec: dict, sources: list[Runs]) -> list[str]:
    """Method, one group of columns per set of runs, the paper's group where the spec quotes the
    paper, then each extra column per set of runs (labelled with the set only where there are several)."""
    columns = list(spec["columns"])
    tags = [f" {runs.label}" if len(sources) > 1 else "" for runs in sources]
    return (["Method"] + [f"{c} {runs.label} (Δ FP)" for runs in sources for c in columns]
            + [f"{c} paper (Δ FP)" for c in columns if quotes_paper(spec)]
            + [f"{c} {label}{tag}" for label in spec.get("extra_columns") or {} for tag in tags for c in columns])


def _markdown_line(spec: dict, row: dict, entries: dict[str, Entry], n_sources: int) -> str:
    """The row in the header's order."""
    extras = list((spec.get("extra_columns") or {}).values())
    texts = [entries[c].shown[i].text for i in range(n_sources) for c in entries]
    texts += [_fmt(e.paper, e.paper_delta) for e in entries.values() if quotes_paper(spec)]
    texts += [MISSING if entries[c].extras[i][j] is None else entries[c].extras[i][j].text(extra.get("digits", 2))
              for j, extra in enumerate(extras) for i in range(n_sources) for c in entries]
    label = row["label"] + (" (paper only)" if row.get("select") is None else "")
    return "| " + " | ".join([label] + texts) + " |"


def _frame_line(spec: dict, row: dict, col: str, entry: Entry, sources: list[Runs]) -> dict:
    """One line of the CSV. With one set of runs the seed count and extra fields are unprefixed,
    as in the published tables; with several each is prefixed by its set's label. Last, each set's
    baselines (``<label>_baselines``)."""
    several = len(sources) > 1
    line: dict = {"row": row["label"], "column": col}
    for runs, s in zip(sources, entry.shown):
        line.update({f"{runs.label}_top1": s.mean, f"{runs.label}_spread": s.spread,
                     f"{runs.label}_seeds" if several else "seeds": s.seeds, f"{runs.label}_delta_fp": s.delta})
    line.update({"paper_top1": entry.paper, "paper_delta_fp": entry.paper_delta})
    for runs, values in zip(sources, entry.extras):
        for extra, value in zip((spec.get("extra_columns") or {}).values(), values):
            line[f"{runs.label}_{extra['field']}" if several else extra["field"]] = None if value is None else value.mean
    line.update({f"{runs.label}_baselines": s.baselines for runs, s in zip(sources, entry.shown)})
    return line


def _collect_runs(spec: dict, runs: Runs) -> dict[tuple[str, str], Cell]:
    """:func:`collect` of one set of runs; an error names the folder it was read from, if known."""
    try:
        return collect(spec, runs.records)
    except ValueError as exc:
        if runs.read_from is None:
            raise
        raise ValueError(f"{runs.owner} runs in {runs.read_from}: {exc}") from None


def _render(spec: dict, sources: list[Runs], made_by: list[str]) -> tuple[str, pd.DataFrame]:
    """Markdown and long-format frame (one line per row × column) of ``spec``: one group of
    columns per set of runs, then the paper's, then the spec's extra columns; below the table, the
    spec's claims with a verdict per set of runs (:mod:`qbench.report.verdicts`). Cells that used
    a less common baseline of their model are marked and the caption says why."""
    cells = [_collect_runs(spec, runs) for runs in sources]
    mixes = _mixes(cells)
    header = _header(spec, sources)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    frame = []
    for row in spec["rows"]:
        entries = {col: _entry(spec, row, col, cells, mixes) for col in spec["columns"]}
        lines.append(_markdown_line(spec, row, entries, len(sources)))
        frame += [_frame_line(spec, row, col, entry, sources) for col, entry in entries.items()]
    claims = claims_section(spec, [(runs.label, c) for runs, c in zip(sources, cells)])
    return "\n".join(_caption(spec, sources, cells, mixes) + lines + claims + made_by) + "\n", pd.DataFrame(frame)


def render(spec: dict, records: list[dict]) -> tuple[str, pd.DataFrame]:
    """qbench's published table: markdown text and a long-format frame (one line per row ×
    column) of ``records`` (``ours``) beside the paper. Its footer names the commands that
    regenerate the committed file from ``results/published``."""
    return _render(spec, [Runs("ours", "our", records)], _made_by(spec, PUBLISHED_SWEEP_FLAGS, PUBLISHED_TABLE_FLAGS))


def render_compared(spec: dict, yours: Runs, published: Runs) -> tuple[str, pd.DataFrame]:
    """Your runs beside qbench's published runs and the paper: ``<col> yours``, ``<col> qbench``,
    ``<col> paper`` groups of columns; the caption states both FP baselines and both folders."""
    return _render(spec, [yours, published], _made_by(spec, "", ""))
