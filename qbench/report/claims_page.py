"""``results/claims.md``, the page a reader opens first: every claim of every table spec judged on
qbench's published records, with the paper's numbers and ours, a summary line per table and the
verdict rule (:mod:`qbench.report.verdicts`). ``qbench-table --claims`` writes it."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from qbench.report.claims import load_claims
from qbench.report.table import PUBLISHED_RECORDS, collect, load_spec
from qbench.report.text import plural
from qbench.report.verdicts import FAILS, HOLDS, INCONCLUSIVE, RULE, claim_block, judge_claim

CLAIMS_PAGE = "claims.md"
CLAIMS_DIR = "results"  # results/claims.md beside results/tables


def verdict_counts(verdicts: list[str], noun: str = "claim") -> str:
    """``3 claims: holds 1, fails 0, inconclusive 2`` (``noun``: what was judged)."""
    count = Counter(verdicts)
    return (f"{plural(len(verdicts), noun)}: holds {count[HOLDS]}, "
            f"fails {count[FAILS]}, inconclusive {count[INCONCLUSIVE]}")


def _table_section(spec: dict, records: list[dict]) -> tuple[str, list[str]]:
    """The summary line of one table spec and its section: each claim judged on ``records``."""
    cells = collect(spec, records)
    claims = load_claims(spec)
    verdicts = [judge_claim(claim, cells, spec.get("spread", "std"))[0] for claim in claims]
    summary = f"[{spec['name']}](tables/{spec['name']}.md) — {spec['title']}: {verdict_counts(verdicts)}"
    section = ["", f"## {spec['name']}", "", f"{spec['title']}. {verdict_counts(verdicts)}."]
    for claim in claims:
        section += claim_block(spec, claim, [("ours", cells)])
    return summary, section


def claims_page(table_dir: Path, records: list[dict], read_from: str) -> str:
    """The markdown of every claim of every spec in ``table_dir`` that states claims (a protocol
    measurement of qbench's own states none), judged on ``records`` (read from ``read_from``); its
    footer is the command that writes it."""
    summaries, sections = [], []
    specs = [load_spec(path.stem, table_dir) for path in sorted(table_dir.glob("*.yaml"))]
    for spec in (s for s in specs if s.get("claims")):
        summary, section = _table_section(spec, records)
        summaries.append(f"- {summary}")
        sections += section
    flag = "" if read_from == PUBLISHED_RECORDS else f" --published-dir {read_from}"
    head = [
        "# The papers' claims, checked on qbench's runs",
        "",
        f"Every claim of every table spec (`conf/table/*.yaml`, `claims:`), judged on qbench's published "
        f"records (`{read_from}`, {len(records)} runs) with the paper's numbers beside ours. Each table "
        "under `results/tables/` lists the same claims below it (the tables rendered from another recipe, "
        "`NAME--RECIPE.md`, judge them on those runs); `qbench-table NAME` judges them on your runs too.",
        "",
        f"Verdict rule: {RULE}",
        "",
        "## Summary",
        "",
    ]
    return "\n".join(head + summaries + sections + ["", f"Made by: `qbench-table --claims{flag}`."]) + "\n"
