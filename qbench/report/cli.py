"""``qbench-table``: render a paper table from run records, or dump every record.

``qbench-table NAME`` shows your runs (``runs/records``, the default ``paths.records_dir``)
beside qbench's published runs (``results/published``) and the paper's numbers, into
``runs/tables``. ``qbench-table NAME --published`` renders qbench's published runs alone beside
the paper, into ``results/tables``: that is how the committed tables are made. Each table lists
its paper's claims with verdicts; ``qbench-table --claims`` writes every table's claims, judged on
qbench's published runs, into ``results/claims.md``. ``qbench-table --results-page`` writes
``results/README.md``: every table and committed recipe variant in ``results/tables`` with its runs'
recipe, commits and dates, its plot and its claims' verdicts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import yaml

from qbench.report.claims_page import CLAIMS_DIR, CLAIMS_PAGE, claims_page
from qbench.report.latex import render_latex
from qbench.report.plot import plot_table, write_png
from qbench.report.records import load_records, records_frame
from qbench.report.results_page import RESULTS_PAGE, results_page
from qbench.report.table import PUBLISHED_RECORDS, Runs, load_spec, narrow_spec, render, render_compared, table_stem
from qbench.validate import fail

CONF_TABLES = Path(__file__).resolve().parents[2] / "conf" / "table"
YOUR_RECORDS = "runs/records"  # paths.records_dir in conf/config.yaml: your own ledger
YOUR_TABLES = "runs/tables"
PUBLISHED_TABLES = "results/tables"


class _Parser(argparse.ArgumentParser):
    """Bad input is one line, ``qbench-table: error: ...``, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(message, self.prog)


def _parser() -> _Parser:
    parser = _Parser(prog="qbench-table", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="table spec in conf/table/ (e.g. lsq_resnet18)")
    parser.add_argument("--all", action="store_true",
                        help="write every record of the records folder read as one CSV (all_runs.csv)")
    parser.add_argument("--published", action="store_true",
                        help=f"render qbench's published records alone (ours vs paper) into {PUBLISHED_TABLES}: "
                             "regenerates the committed tables")
    parser.add_argument("--claims", action="store_true",
                        help=f"judge every table spec's claims on qbench's published records into "
                             f"{CLAIMS_DIR}/{CLAIMS_PAGE} (or --out-dir)")
    parser.add_argument("--results-page", action="store_true",
                        help=f"write {CLAIMS_DIR}/{RESULTS_PAGE} (or --out-dir) from qbench's published records: "
                             f"every table spec and committed variant in {PUBLISHED_TABLES}, its runs, plot and "
                             "claims' verdicts")
    parser.add_argument("--records-dir", help=f"your records (default {YOUR_RECORDS}); not with --published")
    parser.add_argument("--published-dir", default=PUBLISHED_RECORDS,
                        help=f"qbench's published records (default {PUBLISHED_RECORDS})")
    parser.add_argument("--out-dir", help=f"default {YOUR_TABLES}, or {PUBLISHED_TABLES} with --published")
    parser.add_argument("--select", action="append", default=[], metavar="KEY=VALUE",
                        help="render only runs with this config value besides the spec's select "
                             "(e.g. recipe.name=local_short_bn); the output files get the value as a suffix")
    parser.add_argument("--format", choices=("markdown", "latex"), default="markdown",
                        help="latex: also write the table as <name>.tex (booktabs) beside the .md, .csv and .png")
    return parser


def _narrowed(parser: _Parser, items: list[str]) -> dict:
    """``--select`` items as dotted key → value (YAML-typed, so ``method.config=4`` is an int)."""
    narrowed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--select {item!r} is not KEY=VALUE (e.g. recipe.name=local_short_bn)")
        narrowed[key] = yaml.safe_load(value)
    return narrowed


def _read(records_dir: str) -> list[dict]:
    """The records under ``records_dir``; a warning line per unreadable one."""
    records, warnings = load_records(Path(records_dir))
    for w in warnings:
        print(f"qbench-table: warning: skipped {w}", file=sys.stderr)
    return records


def _write_table(name: str, narrowed: dict, args: argparse.Namespace, out: Path) -> None:
    """Render ``name`` in the chosen mode and write ``<name>[--<value>...].md``, ``.csv`` and ``.png``,
    and ``.tex`` with ``--format latex``."""
    spec = narrow_spec(load_spec(name, CONF_TABLES), narrowed)
    if args.published:
        text, frame = render(spec, _read(args.published_dir))
    else:
        yours_dir = args.records_dir or YOUR_RECORDS
        text, frame = render_compared(spec, Runs("yours", "your", _read(yours_dir), yours_dir),
                                      Runs("qbench", "qbench's", _read(args.published_dir), args.published_dir))
    stem = table_stem(spec)
    (out / f"{stem}.md").write_text(text)
    frame.to_csv(out / f"{stem}.csv", index=False)
    write_png(plot_table(spec, frame), out / f"{stem}.png")
    written = ["md", "csv", "png"]
    if args.format == "latex":
        (out / f"{stem}.tex").write_text(render_latex(spec, frame))
        written.append("tex")
    print(text)
    print("-> " + ", ".join(f"{out / stem}.{suffix}" for suffix in written))


def _write_all_runs(records_dir: str, out: Path) -> None:
    """Every record under ``records_dir`` as one CSV row, into ``out/all_runs.csv``."""
    records = _read(records_dir)
    path = out / "all_runs.csv"
    records_frame(records).to_csv(path, index=False)
    print(f"{len(records)} runs -> {path}")


def _write_claims(args: argparse.Namespace) -> None:
    """Every table spec's claims judged on the published records, into ``claims.md``."""
    out = Path(args.out_dir or CLAIMS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    (out / CLAIMS_PAGE).write_text(claims_page(CONF_TABLES, _read(args.published_dir), args.published_dir))
    print(f"-> {out / CLAIMS_PAGE}")


def _write_results_page(args: argparse.Namespace) -> None:
    """Every table spec and committed recipe variant with its runs, plot and claims' verdicts, into
    ``README.md`` beside ``claims.md``."""
    out = Path(args.out_dir or CLAIMS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    page = results_page(CONF_TABLES, Path(PUBLISHED_TABLES), _read(args.published_dir), args.published_dir)
    (out / RESULTS_PAGE).write_text(page)
    print(f"-> {out / RESULTS_PAGE}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.name or args.all or args.claims or args.results_page):
        parser.error("give a table name, --all, --claims or --results-page")
    if args.published and args.records_dir:
        parser.error("--published reads qbench's published records only; give --published-dir, not --records-dir")
    if args.format == "latex" and not args.name:
        parser.error("--format latex writes a table's .tex: give a table name")
    narrowed = _narrowed(parser, args.select)
    if not Path(args.published_dir).is_dir() and (args.name or args.published or args.claims or args.results_page):
        parser.error(f"no published records folder {args.published_dir} "
                     "(run from the repository root or give --published-dir)")
    if args.results_page and not Path(PUBLISHED_TABLES).is_dir():
        parser.error(f"--results-page reads the committed tables in {PUBLISHED_TABLES}: run from the repository root")
    out = Path(args.out_dir or (PUBLISHED_TABLES if args.published else YOUR_TABLES))
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.all:
            _write_all_runs(args.published_dir if args.published else args.records_dir or YOUR_RECORDS, out)
        if args.name:
            _write_table(args.name, narrowed, args, out)
        if args.claims:
            _write_claims(args)
        if args.results_page:
            _write_results_page(args)
    except ValueError as exc:
        fail(str(exc), parser.prog)
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
