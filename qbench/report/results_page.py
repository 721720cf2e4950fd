"""``results/README.md``, the page a reader of the repository opens: every table spec, and under it
each committed recipe variant of its table (``results/tables/NAME--RECIPE.md``), with the data,
the recipes, the commands, the git commits and the dates of the runs it shows, its plot, a link to
the full table and its claims' verdicts (judged by :mod:`qbench.report.verdicts`), below the
verdict counts over all of them; last, the parity of every exported run (:mod:`qbench.report.exports`). ``qbench-table --results-page`` writes it from qbench's published
records; it holds nothing but what the records and the specs say, so it regenerates byte-identical.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from qbench.report.claims import Claim, load_claims
from qbench.report.claims_page import CLAIMS_PAGE, verdict_counts
from qbench.report.exports import exports_section
from qbench.report.table import (PUBLISHED_RECORDS, Cell, collect, load_spec, narrow_spec, published_commands,
                                 table_stem)
from qbench.report.text import plural
from qbench.report.verdicts import FAILS, HOLDS, MISSING, Outcome, judge_claim

RESULTS_PAGE = "README.md"
VARIANT_KEY = "recipe.name"  # a committed NAME--VALUE.md is the table NAME selected at recipe.name=VALUE


@dataclass(frozen=True)
class Section:
    """One table (or recipe variant) on the page: its index line, its section and its claims' verdicts."""

    index: str
    lines: list[str]
    verdicts: list[str]


def variants(name: str, tables_dir: Path) -> list[dict]:
    """The selections (``{recipe.name: VALUE}``) of the committed variants ``NAME--VALUE.md`` of table ``name``."""
    return [{VARIANT_KEY: yaml.safe_load(path.stem.partition("--")[2])}
            for path in sorted(tables_dir.glob(f"{name}--*.md"))]


def _runs(cells: dict[tuple[str, str], Cell]) -> list[dict]:
    """Every record the table's cells are built from, whatever its status."""
    return [r for cell in cells.values() for r in cell.runs]


def _runs_text(runs: list[dict]) -> str:
    """``24 (20 finished, 4 diverged)``; ``24`` when every run finished."""
    statuses = Counter(r["status"] for r in runs)
    if set(statuses) <= {"ok"}:
        return str(len(runs))
    finished = [f"{statuses.pop('ok')} finished"] if "ok" in statuses else []
    return f"{len(runs)} ({', '.join(finished + [f'{n} {status}' for status, n in sorted(statuses.items())])})"


def _recipes(runs: list[dict]) -> str:
    """The distinct ``config.recipe.name`` of ``runs``, or — without runs."""
    names = sorted({str((r["config"].get("recipe") or {}).get("name")) for r in runs})
    return ", ".join(f"`{n}`" for n in names) if names else MISSING


def _wall_time(runs: list[dict]) -> str:
    """The summed wall time of ``runs`` per device (``device``): ``1.2 h on cpu, 6 min on cuda``;
    — where no run recorded one."""
    by_device: dict[str, float] = {}
    for r in runs:
        if r.get("wall_time_s") is not None:
            device = str(r.get("device") or "an unrecorded device")
            by_device[device] = by_device.get(device, 0.0) + r["wall_time_s"]
    return ", ".join(f"{_duration(s)} on {d}" for d, s in sorted(by_device.items())) or MISSING


def _duration(seconds: float) -> str:
    """``1.2 h`` from an hour on, ``6 min`` below."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _commits(runs: list[dict]) -> str:
    """Each git commit of ``runs`` (short hash), first-run order: its run count and how many of
    them came from a dirty tree."""
    by_commit: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (r.get("created") or "", (r.get("git") or {}).get("commit") or "")):
        commit = (r.get("git") or {}).get("commit")
        by_commit.setdefault(f"`{commit[:7]}`" if commit else "no commit recorded", []).append(r)
    parts = []
    for commit, commit_runs in by_commit.items():
        dirty = sum(1 for r in commit_runs if (r.get("git") or {}).get("dirty"))
        note = "" if not dirty else f", {'all' if dirty == len(commit_runs) else dirty} from a dirty tree"
        parts.append(f"{commit} ({plural(len(commit_runs), 'run')}{note})")
    return ", ".join(parts) if parts else MISSING


def _dates(runs: list[dict]) -> str:
    """The first and last day (``created``) of ``runs``: ``2026-11-22 to 2026-11-23``, one day alone."""
    days = sorted({r["created"][:10] for r in runs if r.get("created")})
    if not days:
        return MISSING
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def _reason(claim: Claim, verdict: str, outcomes: list[Outcome]) -> str:
    """The comparisons' counts and, unless all hold, the first comparison that decided the verdict."""
    counts = verdict_counts([o.verdict for o in outcomes], "comparison")
    if verdict == HOLDS:
        return counts
    comparison, outcome = next((c, o) for c, o in zip(claim.comparisons, outcomes) if o.verdict == verdict)
    return f"{counts}; first {'failing' if verdict == FAILS else verdict}, `{comparison}`: {outcome.reason}"


def _plot(stem: str, tables_dir: Path) -> str:
    """The Markdown image of ``tables/<stem>.png``, or a line saying there is none."""
    if not (tables_dir / f"{stem}.png").is_file():
        return f"No plot committed (`tables/{stem}.png`)."
    return f"![{stem}: each number's Δ top-1 to its own FP per column, ours and the paper's](tables/{stem}.png)"


def _made_by(spec: dict) -> str:
    """The sweep and the render command of the spec's committed table; — where the spec names no sweep."""
    if not spec.get("command"):
        return MISSING
    sweep, render = published_commands(spec)
    return f"`{sweep}` then `{render}`"


def _section(spec: dict, records: list[dict], tables_dir: Path, heading: str) -> Section:
    """The page's section of ``spec`` (narrowed for a recipe variant) judged on ``records``."""
    stem = table_stem(spec)
    cells = collect(spec, records)
    runs = _runs(cells)
    judged = [(claim, *judge_claim(claim, cells, spec.get("spread", "std"))) for claim in load_claims(spec)]
    verdicts = [verdict for _, verdict, _ in judged]
    narrowed = spec.get("narrowed") or {}
    selected = ", ".join(f"{k}={v}" for k, v in narrowed.items())
    title = f"{spec['title']}{f', {selected}' if selected else ''}"
    lines = ["", f"{heading} {stem}", "", f"**{title}** — [full table](tables/{stem}.md)", "",
             f"- Data: {spec.get('dataset_label', MISSING)}"]
    if selected:
        lines.append(f"- Runs selected beyond the spec: {selected} (it takes precedence over the data line)")
    lines += [f"- Recipe of the runs shown: {_recipes(runs)}",
              f"- Runs: {_runs_text(runs)}, created {_dates(runs)}; git commits {_commits(runs)}",
              f"- Wall time of the runs: {_wall_time(runs)} (a run that trained its FP baseline includes it)",
              f"- Made by: {_made_by(spec)}", "", _plot(stem, tables_dir), "",
              f"The paper's claims on these runs — {verdict_counts(verdicts)}:", ""]
    lines += [f"- **{claim.id}** — {verdict} — {_reason(claim, verdict, outcomes)}"
              for claim, verdict, outcomes in judged]
    indent = "  " if narrowed else ""
    index = f"{indent}- [{stem}](#{stem}) — {title}: {verdict_counts(verdicts)}"
    return Section(index, lines, verdicts)


def _sections(table_dir: Path, tables_dir: Path, records: list[dict]) -> list[tuple[Section, list[Section]]]:
    """Each spec's section with its committed recipe variants' sections, in page order."""
    groups = []
    for path in sorted(table_dir.glob("*.yaml")):
        spec = load_spec(path.stem, table_dir)
        groups.append((_section(spec, records, tables_dir, "##"),
                       [_section(narrow_spec(spec, selection), records, tables_dir, "###")
                        for selection in variants(spec["name"], tables_dir)]))
    return groups


def _summary(groups: list[tuple[Section, list[Section]]]) -> str:
    """The verdict counts over the tables, then over their recipe variants."""
    table_verdicts = [v for table, _ in groups for v in table.verdicts]
    variant_sections = [variant for _, group in groups for variant in group]
    variant_verdicts = [v for variant in variant_sections for v in variant.verdicts]
    return (f"**Summary**: the {plural(len(groups), 'table')}, {verdict_counts(table_verdicts)}; "
            f"their {plural(len(variant_sections), 'recipe variant')}, {verdict_counts(variant_verdicts)}.")


def results_page(table_dir: Path, tables_dir: Path, records: list[dict], read_from: str) -> str:
    """The markdown of ``results/README.md``: every spec in ``table_dir`` and every committed
    recipe variant in ``tables_dir`` judged on ``records`` (read from ``read_from``); its footer
    is the command that writes it."""
    groups = _sections(table_dir, tables_dir, records)
    ordered = [section for table, group in groups for section in (table, *group)]
    flag = "" if read_from == PUBLISHED_RECORDS else f" --published-dir {read_from}"
    head = [
        "# qbench's results",
        "",
        f"This page is generated from qbench's published records (`{read_from}`, {len(records)} runs) and "
        "the table specs (`conf/table/*.yaml`): for each paper table, and each of its tables rendered "
        "from another recipe (`NAME--RECIPE`), the data and recipe of the runs it shows, the commands "
        "that made them, their git commits and dates, its plot (each number's Δ top-1 to its own FP; the "
        "paper's numbers as hollow markers), a link to the full table and the paper's claims with their "
        "verdicts. Each comparison of a claim is decided on the seeds at 95%, two-sided: it holds when "
        "significant in the claimed direction, fails when significant the other way, and is inconclusive "
        "otherwise or when a cell was not run, diverged or has fewer than 2 seeds; a claim holds if all "
        f"its comparisons hold and fails if any fails. The rule and every comparison: [{CLAIMS_PAGE}]({CLAIMS_PAGE}) "
        "(a recipe variant's comparisons: under its full table).",
        "",
        _summary(groups),
        "",
    ]
    body = [line for section in ordered for line in section.lines] + exports_section(records)
    footer = ["", f"Made by: `qbench-table --results-page{flag}`."]
    return "\n".join(head + [s.index for s in ordered] + body + footer) + "\n"
