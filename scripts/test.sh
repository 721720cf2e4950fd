#!/usr/bin/env bash
# Set up (first time: .venv, dependencies, Fashion-MNIST) and run the whole test suite.
#   bash scripts/test.sh            # every test
#   bash scripts/test.sh -k lsq     # pytest arguments pass through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec python -m pytest -q "$@"
