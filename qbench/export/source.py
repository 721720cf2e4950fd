"""The finished run to export: its record, its config and its quantized model.

A run that fine-tunes (LSQ, LSQ+, FAQ) leaves a checkpoint, which holds everything
(:func:`qbench.evaluate.rebuild`). A post-training run (round-to-nearest, Attention Round)
leaves none: its model is replayed from the cached FP baseline with the phases the run used
(plan → prepare → initialise on the same calibration images → finalise), in the run's order of
random draws and memory format, and the replay must reproduce the record's top-1 exactly on the
run's test set before it is exported (a run on another device or thread count may not).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qbench import phases
from qbench.checkpoint import CheckpointError, load_checkpoint
from qbench.evaluate import rebuild
from qbench.identity import file_sha256
from qbench.methods import create_method
from qbench.models import create_model
from qbench.report.records import read_record


class BadRun(ValueError):
    """The run cannot be exported: unfinished, missing, foreign or without an integer form."""


@dataclass(frozen=True)
class Source:
    """A finished run: its record and where it lives, and how its model is obtained."""

    record: dict
    record_path: Path
    checkpoint: Path | None
    runs_dir: Path

    @property
    def config(self) -> dict:
        return self.record["config"]


def run_paths(run_id: str | None, checkpoint: Path | None, runs_dir: Path | None, records_dir: Path | None) -> Source:
    """The finished run named by ``run_id`` or by a ``checkpoint`` path: its record under
    ``records_dir`` (default: the folder its checkpoint's config names, else ``runs/records``), its
    checkpoint and FP baseline under ``runs_dir`` (default: its config's ``paths.runs_dir``); raises
    :class:`BadRun` when the record is missing, unreadable, not ``ok`` or of another run."""
    if checkpoint is not None:
        try:
            meta = load_checkpoint(checkpoint).get("meta") or {}
        except CheckpointError as exc:
            raise BadRun(str(exc)) from None
        if "run_id" not in meta or "config" not in meta:
            raise BadRun(f"checkpoint {checkpoint} is not a qbench run checkpoint (no run id or config in it)")
        run_id = meta["run_id"]
        records_dir = records_dir or Path(meta["config"]["paths"]["records_dir"])
    records_dir = records_dir or Path("runs/records")
    record_path = records_dir / f"{run_id}.json"
    if not record_path.is_file():
        raise BadRun(f"run {run_id} has no record in {records_dir}: it has not finished "
                     "(or set records_dir=DIR to the folder of its record)")
    record = read_record(record_path)
    if record.get("run_id") != run_id:
        raise BadRun(f"record {record_path} belongs to run {record.get('run_id')}, not {run_id}")
    if record["status"] != "ok":
        raise BadRun(f"run {run_id} is not finished: its record says {record['status']!r}")
    method = create_method(record["config"]["method"])
    if not method.quantizes:
        raise BadRun(f"run {run_id} is method {method.name}: nothing is quantized, there is no integer form")
    runs_dir = runs_dir or Path(record["config"]["paths"]["runs_dir"])
    if checkpoint is None and method.trains:
        checkpoint = runs_dir / "runs" / run_id / "checkpoint.pt"
        if not checkpoint.is_file():
            raise BadRun(f"run {run_id} has no checkpoint at {checkpoint}")
    return Source(record, record_path, checkpoint if method.trains else None, runs_dir)


def baseline_model(record: dict, runs_dir: Path) -> nn.Module:
    """The run's FP baseline as its record names it (key and weights hash), from the cache
    under ``runs_dir``; never trained here: a missing or changed one is a :class:`BadRun`."""
    cfg, fp = record["config"], record["fp"]
    directory = runs_dir / "baselines" / f"{cfg['model']['name']}-{cfg['dataset']['name']}-{fp['baseline_key']}"
    weights = directory / "model.pt"
    if not weights.is_file() or file_sha256(weights) != fp["weights_sha256"]:
        raise BadRun(f"the run's FP baseline is not cached at {directory} (or its weights changed); "
                     "the replay needs it")
    model = create_model(cfg["model"]["name"], cfg["dataset"]["num_classes"], cfg["dataset"]["in_chans"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def quantized_model(source: Source, calibration: Callable[[], list[torch.Tensor]]) -> nn.Module:
    """The run's quantized model on the CPU in eval mode: rebuilt from its checkpoint, or
    replayed from its FP baseline on the run's calibration images (``calibration()``, called
    only for a replay; module docstring)."""
    if source.checkpoint is not None:
        try:
            model, meta = rebuild(source.checkpoint)
        except CheckpointError as exc:
            raise BadRun(str(exc)) from None
        if meta["run_id"] != source.record["run_id"]:
            raise BadRun(f"checkpoint {source.checkpoint} belongs to run {meta['run_id']}, "
                         f"not {source.record['run_id']}")
        return model
    cfg = source.config
    method = create_method(cfg["method"])
    torch.manual_seed(cfg["seed"])  # the run's order: seed, data, baseline model, phases
    batches = calibration()
    model = baseline_model(source.record, source.runs_dir)
    if cfg["runtime"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    plan = phases.plan_layers(model, cfg, method)
    model = phases.prepare(model, plan, method)
    phases.initialize(model, method, cfg, batches)
    method.finalize(model, batches)
    return model.eval()
