#!/usr/bin/env bash
# Shared set-up for scripts/run.sh and scripts/test.sh: a .venv at the repository root with
# qbench and its pinned dependencies, and Fashion-MNIST from Debian when it is missing.
# Sourced, not executed: it leaves the venv activated for the caller.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
stamp="$venv/.qbench-installed"

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

# Reinstall only when the dependency list changed since the last install.
want="$(sha256sum "$repo_root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing qbench and its dependencies (torch 2.14.1 / torchvision 0.29.1 are pinned)"
    # pip warns about each configured local index folder that is absent: show the rest.
    # No wheel cache (a second copy of what pip fetches): torch's CUDA build alone takes about 6 GB.
    log="$(mktemp)"
    if ! python -m pip install --quiet --no-cache-dir -e "$repo_root[test]" >"$log" 2>&1; then
        grep -v "is ignored: it is neither" "$log" >&2 || true
        free_gb="$(df -Pk "$venv" | awk 'NR==2 {printf "%.1f", $4 / 1048576}')"
        echo "[setup] pip install failed ($free_gb GB free where $venv lies; the install needs about 6.5 GB)" >&2
        exit 1
    fi
    grep -v "is ignored: it is neither" "$log" || true
    rm -f "$log"
    echo "$want" > "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -d "$fmnist" ] && [ -z "${QBENCH_DATA_ROOT:-}" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[setup] installing Debian's dataset-fashion-mnist"
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
            || echo "[setup] apt could not install dataset-fashion-mnist; torchvision will download it"
    else
        echo "[setup] $fmnist missing and apt unusable; torchvision will download Fashion-MNIST"
    fi
fi
