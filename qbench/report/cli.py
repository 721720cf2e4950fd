"""``qbench-table``: render a paper table from the run records, or dump every record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qbench.report.records import load_records, records_frame
from qbench.report.table import load_spec, render

CONF_TABLES = Path(__file__).resolve().parents[2] / "conf" / "table"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbench-table", description=__doc__)
    parser.add_argument("name", nargs="?", help="table spec in conf/table/ (e.g. lsq_resnet18)")
    parser.add_argument("--all", action="store_true", help="write every record as one CSV (all_runs.csv)")
    parser.add_argument("--records-dir", default="results/records")
    parser.add_argument("--out-dir", default="results/tables")
    args = parser.parse_args(argv)
    if not args.name and not args.all:
        parser.error("give a table name or --all")
    records, warnings = load_records(Path(args.records_dir))
    for w in warnings:
        print(f"qbench-table: warning: skipped {w}", file=sys.stderr)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.all:
            path = out / "all_runs.csv"
            records_frame(records).to_csv(path, index=False)
            print(f"{len(records)} runs -> {path}")
        if args.name:
            text, frame = render(load_spec(args.name, CONF_TABLES), records)
            (out / f"{args.name}.md").write_text(text)
            frame.to_csv(out / f"{args.name}.csv", index=False)
            print(text)
            print(f"-> {out / args.name}.md, {out / args.name}.csv")
    except ValueError as exc:
        print(f"qbench-table: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
