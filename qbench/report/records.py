"""Run records: one JSON file per run, written atomically, read back as dicts or a DataFrame."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "qbench")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@lru_cache(maxsize=None)
def git_state(repo: Path | None = None) -> dict[str, object]:
    """Commit hash and whether the work tree differs from it (``None`` outside a git checkout).

    Read once per process: a sweep's later jobs run the code the process loaded, whatever the
    checkout holds by then."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def write_record(record: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"record {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(record, dict) or "status" not in record or "config" not in record:
        raise ValueError(f"record {path} lacks status/config")
    return record


def load_records(records_dir: Path) -> tuple[list[dict], list[str]]:
    """Every readable record under ``records_dir`` and a warning line per unreadable one."""
    records, warnings = [], []
    for path in sorted(Path(records_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except ValueError as exc:
            warnings.append(str(exc))
    return records, warnings


def flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: flattened config under ``config.*``, metrics, FP metrics, provenance."""
    return pd.DataFrame([flatten(r) for r in records])
