"""A run's identity: a hash of the parts of its resolved config that can change its result."""
from __future__ import annotations

import hashlib
import json

# Top-level keys that say how or where to run, never what is computed.
NOT_RESULT_RELEVANT = ("runtime", "paths", "force", "bits", "dry_run", "retries")
DATASET_LOCATION_KEYS = ("root", "workers")


def config_hash(obj: object, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def result_config(cfg: dict, quantizes: bool) -> dict:
    """The result-relevant part of a resolved config (a plain dict). The float reference drops
    every quantization field, so it has one identity whatever ``bits`` says."""
    out = {k: v for k, v in cfg.items() if k not in NOT_RESULT_RELEVANT and k != "hydra"}
    out["dataset"] = {k: v for k, v in cfg["dataset"].items() if k not in DATASET_LOCATION_KEYS}
    if not quantizes:
        for key in ("wbits", "abits", "quant", "calib", "seed"):
            out.pop(key, None)
        out["recipe"] = {k: v for k, v in cfg["recipe"].items() if k != "qat"}
    return out


def run_id(cfg: dict, quantizes: bool) -> str:
    return config_hash(result_config(cfg, quantizes))


def baseline_config(cfg: dict) -> dict:
    """What the FP baseline depends on: data, architecture, weights source, FP recipe, seed."""
    recipe = cfg["recipe"]
    return {
        "dataset": {k: v for k, v in cfg["dataset"].items() if k not in DATASET_LOCATION_KEYS},
        "model": cfg["model"],
        "fp_recipe": None if cfg["dataset"]["pretrained_fp"] or cfg["model"]["weights"] else
        {"batch_size": recipe["batch_size"], **recipe["fp"]},
        "baseline_seed": cfg["baseline_seed"],
    }
