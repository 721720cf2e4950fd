"""A run's identity: a hash of the parts of its resolved config that can change its result."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Top-level keys that say how or where to run, never what is computed.
NOT_RESULT_RELEVANT = ("runtime", "paths", "force", "bits", "dry_run", "retries")
# Dataset keys that say where and how the data is read (ImageFolder root, DataLoader settings), not what.
DATASET_LOCATION_KEYS = ("root", "workers", "pin_memory", "persistent_workers")


def config_hash(obj: object, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def result_config(cfg: dict, quantizes: bool) -> dict:
    """The result-relevant part of a resolved config (a plain dict). The float reference drops
    every quantization field, so it has one identity whatever ``bits`` says."""
    out = {k: v for k, v in cfg.items() if k not in NOT_RESULT_RELEVANT and k != "hydra"}
    if "dataset" in cfg:
        out["dataset"] = {k: v for k, v in cfg["dataset"].items() if k not in DATASET_LOCATION_KEYS}
    if not quantizes:
        for key in ("wbits", "abits", "quant", "calib", "seed"):
            out.pop(key, None)
        if "recipe" in cfg:
            out["recipe"] = {k: v for k, v in cfg["recipe"].items() if k != "qat"}
    return out


def quantizes(cfg: dict) -> bool:
    """Whether the config's method quantizes, as the method registry says (a method no longer
    registered, in an old record, counts as quantizing)."""
    from qbench.methods import METHODS

    method = METHODS.get(cfg.get("method", {}).get("name"))
    return method is None or method.quantizes


def run_id(cfg: dict) -> str:
    """The run's identity: the ledger's record name, and what ``dry_run`` and resumption key on."""
    return config_hash(result_config(cfg, quantizes(cfg)))


def seed_free_config(cfg: dict) -> dict:
    """:func:`result_config` of a record's config without its seed, so that the seeds of one
    experiment share it. The calibration seed counts as part of the seed where it follows it
    (``calib.seed: ${seed}``, the default); a fixed one stays part of the experiment."""
    out = result_config(cfg, quantizes(cfg))
    out.pop("seed", None)
    calib = out.get("calib")
    if calib is not None and "seed" in calib and calib["seed"] == cfg.get("seed"):
        out["calib"] = {k: v for k, v in calib.items() if k != "seed"}
    return out


def seed_free_identity(cfg: dict) -> str:
    """Hash of :func:`seed_free_config`: records with the same one are seeds of one experiment."""
    return config_hash(seed_free_config(cfg))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file at ``path``, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def baseline_config(cfg: dict, device_type: str) -> dict:
    """What the FP baseline depends on: data, architecture, weights source (a ``model.weights``
    file by its content, so that a file replaced under the same name is a new baseline), FP
    recipe (with the CPU thread count), seed, and the device type that trains it (CPU and CUDA
    kernels reduce in different orders, so they give different weights)."""
    recipe = cfg["recipe"]
    weights = cfg["model"]["weights"]
    trained = not (cfg["dataset"]["pretrained_fp"] or weights)
    return {
        "dataset": {k: v for k, v in cfg["dataset"].items() if k not in DATASET_LOCATION_KEYS},
        "model": {**cfg["model"], "weights_sha256": file_sha256(weights)} if weights else cfg["model"],
        "fp_recipe": {"batch_size": recipe["batch_size"], "cpu_threads": recipe.get("cpu_threads"), **recipe["fp"]}
        if trained else None,
        "device_type": device_type if trained else None,
        "baseline_seed": cfg["baseline_seed"],
    }
