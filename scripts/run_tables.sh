#!/usr/bin/env bash
# Run every cell of the named tables (all of them by default), then render each table.
# Finished cells are skipped and interrupted ones resume, so rerunning after a stop carries on.
#   bash scripts/run_tables.sh                              # every experiment in conf/experiment
#   bash scripts/run_tables.sh lsqplus_table2 apot_ablation -- runtime.threads=1
# Arguments after `--` go to every sweep (e.g. runtime.threads=1 to run two queues side by side).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
names=() overrides=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == "--" ]]; then shift; overrides=("$@"); break; fi
  names+=("$1"); shift
done
if [[ ${#names[@]} -eq 0 ]]; then
  for f in conf/experiment/*.yaml; do names+=("$(basename "$f" .yaml)"); done
fi
for name in "${names[@]}"; do
  echo "=== $name: started $(date +%T)"
  qbench -m "experiment=$name" runtime.progress=false "${overrides[@]}"
  echo "=== $name: finished $(date +%T)"
done
for f in conf/table/*.yaml; do
  qbench-table "$(basename "$f" .yaml)"
done
