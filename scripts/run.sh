#!/usr/bin/env bash
# Set up (first time: .venv, dependencies, Fashion-MNIST) and run one qbench experiment.
#   bash scripts/run.sh                      # the default: ResNet18, LSQ, W4A4, Fashion-MNIST
#   bash scripts/run.sh method=lsq bits=2    # any qbench overrides
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec qbench "$@"
