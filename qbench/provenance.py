"""Where a result came from: library versions and the git state of the code that made it."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "qbench")
CHECKOUT = Path(__file__).resolve().parents[1]  # the qbench source tree


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for benchmark pages."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_kernels() -> dict[str, str | None]:
    """What picks the CPU kernels, and so the float rounding of everything a CPU run computes: the
    CPU's name, the vector instruction set PyTorch's kernels dispatch to (``AVX2``, ``AVX512``;
    ``ATEN_CPU_CAPABILITY`` caps it) and the cap on oneDNN's (``ONEDNN_MAX_CPU_ISA``, which runs
    the convolutions; ``None``: the machine's best). One FP recipe trained on an AVX2 and on an
    AVX512 machine gives two different networks."""
    import torch

    return {"cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


@lru_cache(maxsize=None)
def git_state(repo: Path | None = None) -> dict[str, object]:
    """Commit hash and whether the work tree differs from it (``None`` outside a git checkout).

    Read once per process: a sweep's later jobs run the code the process loaded, whatever the
    checkout holds by then."""
    repo = repo or CHECKOUT
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}
