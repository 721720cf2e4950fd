#!/usr/bin/env bash
# Run every cell of the named tables (all of them by default), then render each table.
# Finished cells are skipped and interrupted ones resume, so rerunning after a stop carries on.
#   bash scripts/run_tables.sh                              # every experiment in conf/experiment
#   bash scripts/run_tables.sh lsqplus_table2 apot_ablation -- recipe.cpu_threads=1
#   bash scripts/run_tables.sh --publish lsqplus_table2     # developers: refresh the committed tables
#   bash scripts/run_tables.sh --publish --render-only      # re-render them from the records alone
# Without --publish the sweeps write your own ledger (paths.records_dir, runs/records) and each
# table shows your runs beside qbench's published ones and the paper's, in runs/tables.
# With --publish the sweeps write qbench's published records (results/published) and every
# committed table in results/tables is rendered again with `qbench-table NAME --published`; a
# committed `NAME--VALUE.md` is the table NAME selected at recipe.name=VALUE; results/claims.md
# (every table's claims judged on the published records) and results/README.md (every table, its
# plot and its verdicts) are written again.
# Arguments after `--` go to every sweep (e.g. recipe.cpu_threads=1 to run two queues side by side:
# a different thread count is a different experiment, with its own FP baseline).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
names=() overrides=() publish=false render_only=false
while [[ $# -gt 0 ]]; do
  if [[ $1 == "--" ]]; then shift; overrides=("$@"); break; fi
  if [[ $1 == "--publish" ]]; then publish=true; shift; continue; fi
  if [[ $1 == "--render-only" ]]; then render_only=true; shift; continue; fi
  names+=("$1"); shift
done
if [[ ${#names[@]} -eq 0 ]]; then
  for f in conf/experiment/*.yaml; do names+=("$(basename "$f" .yaml)"); done
fi
if $publish; then
  overrides=("paths.records_dir=results/published" "${overrides[@]}")
fi
$render_only && names=()
for name in "${names[@]}"; do
  echo "=== $name: started $(date +%T)"
  qbench -m "experiment=$name" runtime.progress=false "${overrides[@]}"
  echo "=== $name: finished $(date +%T)"
done
if $publish; then
  for f in conf/table/*.yaml; do
    qbench-table "$(basename "$f" .yaml)" --published
  done
  for f in results/tables/*--*.md; do
    stem=$(basename "$f" .md)
    qbench-table "${stem%%--*}" --published --select "recipe.name=${stem#*--}"
  done
  qbench-table --claims
  qbench-table --results-page
else
  for f in conf/table/*.yaml; do
    qbench-table "$(basename "$f" .yaml)"
  done
fi
