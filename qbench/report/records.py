"""Run records: one JSON file per run, written atomically, read back as dicts or a DataFrame."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


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
