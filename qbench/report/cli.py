"""``qbench-table``: render a paper table from the run records, or dump every record."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from qbench.report.records import load_records, records_frame
from qbench.report.table import load_spec, narrow_spec, render

CONF_TABLES = Path(__file__).resolve().parents[2] / "conf" / "table"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbench-table", description=__doc__)
    parser.add_argument("name", nargs="?", help="table spec in conf/table/ (e.g. lsq_resnet18)")
    parser.add_argument("--all", action="store_true", help="write every record as one CSV (all_runs.csv)")
    parser.add_argument("--records-dir", default="results/records")
    parser.add_argument("--out-dir", default="results/tables")
    parser.add_argument("--select", action="append", default=[], metavar="KEY=VALUE",
                        help="render only runs with this config value besides the spec's select "
                             "(e.g. recipe.name=local_short_bn); the output files get the value as a suffix")
    args = parser.parse_args(argv)
    if not args.name and not args.all:
        parser.error("give a table name or --all")
    narrowed = {}
    for item in args.select:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--select {item!r} is not KEY=VALUE (e.g. recipe.name=local_short_bn)")
        narrowed[key] = yaml.safe_load(value)
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
            text, frame = render(narrow_spec(load_spec(args.name, CONF_TABLES), narrowed), records)
            stem = args.name + "".join(f"--{value}" for value in narrowed.values())
            (out / f"{stem}.md").write_text(text)
            frame.to_csv(out / f"{stem}.csv", index=False)
            print(text)
            print(f"-> {out / stem}.md, {out / stem}.csv")
    except ValueError as exc:
        print(f"qbench-table: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
