"""One experiment, from a resolved config to a record: ``run(cfg) -> record``."""
from __future__ import annotations

import contextlib
import json
import platform
import time
import traceback
from dataclasses import replace
from typing import Any

import torch
from filelock import FileLock

from qbench import phases
from qbench.allocator import keep_freed_memory
from qbench.baseline import get_baseline
from qbench.checkpoint import CheckpointError, checkpoint_git, checkpoint_meta, load_model_state
from qbench.data import run_data
from qbench.distributed import barrier, current_world, init_world, rank_device
from qbench.engine import Diverged, TrainSettings, evaluate, train, weight_decay_for_bits
from qbench.methods import Method, RunFacts, create_method
from qbench.provenance import cpu_kernels, git_state, versions
from qbench.quant.calibrate import quantizer_values
from qbench.quant.convert import LayerPrecision
from qbench.quant.fused import fuse_activation_quantizers
from qbench.quant.kernels import compile_kernels
from qbench.quant.layers import recompute_weights
from qbench.quant.native import use_native_kernels
from qbench.report.records import write_record
from qbench.sweep import (Cell, cell_state, dry_run_line, predecessor_checkpoint, prepare_cell, previous_record,
                          set_aside, wider_cell)
from qbench.tensorboard import EpochCurves, log_hparams, log_values, open_writer
from qbench.validate import ConfigError, require_native_op


def resolve_device(name: str) -> torch.device:
    """``runtime.device``: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def qat_recipe(cfg: dict) -> dict:
    """The fine-tuning recipe of this run: the recipe's ``qat`` section as the method adjusts it
    (:meth:`~qbench.methods.Method.adjust_recipe`, from its options and the weight bits), with
    the weight decay chosen for the run's weight bits."""
    method = create_method(cfg["method"])
    recipe = method.adjust_recipe(dict(cfg["recipe"]["qat"]), cfg["wbits"])
    recipe["weight_decay"] = weight_decay_for_bits(recipe, cfg["wbits"])
    recipe.pop("weight_decay_by_wbits", None)
    return recipe


def place(model: torch.nn.Module, settings: TrainSettings) -> torch.nn.Module:
    """Move ``model`` to the run's device (and memory format)."""
    model = model.to(settings.device)
    return model.to(memory_format=torch.channels_last) if settings.channels_last else model


def quantize(model: torch.nn.Module, method: Method, cfg: dict, calibration: list[torch.Tensor],
             settings: TrainSettings, writer: Any, resuming: bool) -> tuple[torch.nn.Module, dict[str, LayerPrecision]]:
    """The phases before fine-tuning: plan, prepare (on the run's device; batch norms fused with
    the next layer's input quantizer for training where ``runtime.fuse_batch_norm``), initialise —
    skipped when resuming, since the checkpoint holds the quantizers; initial values to TensorBoard."""
    plan = phases.plan_layers(model, cfg, method)
    model = place(phases.prepare(model, plan, method), settings)
    if method.trains and cfg["runtime"]["fuse_batch_norm"]:
        fuse_activation_quantizers(model)
    if not resuming:
        phases.initialize(model, method, cfg, calibration)
        log_values(writer, "quantizer", quantizer_values(model))
    return model, plan


def say(message: str) -> None:
    """One progress line (rank 0 only under torchrun)."""
    if current_world().is_main:
        print(f"[qbench] {message}", flush=True)


def settings_of(cfg: dict) -> TrainSettings:
    """Apply ``runtime.*`` and the recipe's ``cpu_threads`` to this process (quantizer kernels,
    the native LSQ op and its weight recomputation, the allocator, torch threads); the trainer's settings."""
    rt = cfg["runtime"]
    keep_freed_memory(rt.get("keep_freed_memory", False))  # absent from configs stored before the field: off
    compile_kernels(rt["compile_quantizers"])
    native_kernels = rt.get("native_kernels", False)  # absent from configs stored before the field: off
    if native_kernels:
        require_native_op()
    use_native_kernels(native_kernels)
    recompute_weights(rt.get("recompute_weights", False))  # absent from configs stored before the field: off
    if cfg["recipe"].get("cpu_threads"):
        torch.set_num_threads(cfg["recipe"]["cpu_threads"])
    return TrainSettings(resolve_device(rt["device"]), rt["channels_last"], rt["progress"], rt["log_every"])


def first_line(exc: BaseException) -> str:
    """``Type: first non-empty line of the message`` — the error line of a failed record."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(cfg: dict) -> dict:
    """Run one experiment and return its record (also written to ``paths.records_dir``).

    The record's ``method`` holds every method option as used, presets resolved (LSQ+
    ``config: 4`` appears with its ``act_signed``, ``act_asymmetric`` and ``offset``), and the
    run's identity is computed from that, so two spellings of one experiment are one run.

    ``dry_run``: print the cell's state (:mod:`qbench.sweep`) and return it; nothing runs and
    nothing is written. A cell whose record already says ``ok`` or ``diverged`` (a NaN loss is the
    cell's result too: the same code and baseline diverge again) is reported and skipped unless
    ``force`` is set; an interrupted one resumes from its checkpoint in
    ``<runs_dir>/runs/<run id>/``. An unreadable record is reported and the cell runs again; an
    unusable checkpoint is set aside (``checkpoint.pt.corrupt``) and the cell starts over. A
    crash (any exception but a :class:`ConfigError`) is retried ``retries`` times, then
    recorded as ``failed`` with its error line (traceback in the run folder's ``error.log``).

    A cell that starts from another run (APoT's progressive chain,
    :meth:`~qbench.methods.Method.predecessor`) runs that run first when it has not finished
    (never forced); if it does not end ``ok``, the cell is recorded ``failed`` without starting.
    Outside torchrun a cell runs under a lock file (``<runs_dir>/runs/<run id>.lock``), so the
    parallel jobs of a Slurm sweep that all need one wider run wait for it instead of running it
    twice.
    """
    cell = prepare_cell(cfg)
    if cfg["dry_run"]:
        say(dry_run_line(cell))
        return {"run_id": cell.run_id, "status": "dry_run"}
    if not cfg["force"] and cell_state(cell)[0] in ("done", "diverged"):
        return run_cell(cell, cfg)  # reports the record; a finished cell needs no lock file
    with cell_lock(cell):
        return run_cell(cell, cfg)


def cell_lock(cell: Cell) -> contextlib.AbstractContextManager:
    """An exclusive lock on the cell's runs while it runs (none under torchrun: every rank runs the
    cell, and a rank waiting for a lock would leave the others blocked in a collective)."""
    if current_world().parallel:
        return contextlib.nullcontext()
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cell.run_dir.parent / f"{cell.run_id}.lock"))


def run_cell(cell: Cell, cfg: dict) -> dict:
    """:func:`run` for a prepared cell, under its lock unless it is done: its record is read here,
    after the lock, since another process may have finished the cell meanwhile."""
    previous, problem = previous_record(cell)
    if problem:
        say(f"{problem}; running the cell again")
    finished = previous is not None and previous["status"] in ("ok", "diverged")
    if finished and not cfg["force"]:
        outcome = (f"is already done: top-1 {previous['metrics']['top1']:.2f} (FP {previous['fp']['top1']:.2f})"
                   if previous["status"] == "ok" else f"already diverged: {previous.get('reason')}")
        say(f"run {cell.run_id} {outcome}; record {cell.record_path} (force=true reruns it)")
        return previous
    wider = wider_cell(cell)
    if wider is not None:
        say(f"run {cell.run_id} ({cell.label()}) starts from run {wider.run_id} ({wider.label()})")
        before = run({**wider.cfg, "force": False, "dry_run": False})
        if before["status"] != "ok":
            return failed(cell, f"it starts from run {before['run_id']}, which ended {before['status']}", 0)
    crashes = 0
    forced = finished  # and force=true, else returned above
    while True:
        try:
            return execute(cell, attempt=crashes + 1, start_over=forced and crashes == 0)
        except ConfigError:
            raise
        except CheckpointError as exc:
            say(f"{exc}; set aside as {set_aside(exc.path).name}, starting over")
        except Exception as exc:  # a crash: retried, then recorded; the sweep goes on
            crashes += 1
            error = first_line(exc)
            cell.run_dir.mkdir(parents=True, exist_ok=True)
            with open(cell.run_dir / "error.log", "a") as log:
                log.write(f"attempt {crashes}:\n{traceback.format_exc()}\n")
            retrying = crashes <= cfg["retries"]
            say(f"run {cell.run_id} crashed (attempt {crashes} of {cfg['retries'] + 1}): {error}"
                + ("; retrying" if retrying else ""))
            if not retrying:
                return failed(cell, error, crashes)


def failed(cell: Cell, error: str, attempts: int) -> dict:
    """Write and return the record of a cell that crashed on every attempt."""
    record = {
        "run_id": cell.run_id, "status": "failed", "config": cell.cfg, "metrics": None, "fp": None,
        "error": error, "attempts": attempts, "error_log": str(cell.run_dir / "error.log"),
        "seed": cell.cfg["seed"], "versions": versions(), "git": git_state(), "host": platform.node(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if current_world().is_main:
        write_record(record, cell.record_path)
    say(f"run {cell.run_id} failed: {error}; record {cell.record_path}")
    return record


def execute(cell: Cell, attempt: int = 1, start_over: bool = False) -> dict:
    """Compute the cell: data, FP baseline, then the phases of :mod:`qbench.phases` — plan,
    prepare, initialise (skipped when resuming: the checkpoint holds the quantizers), fine-tune
    (methods that train), finalise — evaluate, report; write and return its record. Input
    errors found on the way (data, weights file) are :class:`ConfigError`; a NaN loss gives a
    ``diverged`` record. ``start_over`` (a finished cell rerun with ``force=true``): its
    checkpoint is removed first, so the cell trains again instead of resuming at its end."""
    cfg, method, rid = cell.cfg, cell.method, cell.run_id
    start_from = predecessor_checkpoint(cell)
    settings = settings_of(cfg)
    world = init_world(settings.device)
    settings = replace(settings, device=rank_device(settings.device, world))
    run_dir = cell.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    started = time.time()
    provenance = {"versions": versions(), "git": git_state(), "cpu_kernels": cpu_kernels()}
    torch.manual_seed(cfg["seed"])
    recipe = cfg["recipe"]
    try:
        data = run_data(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    say(f"run {rid}: {cell.label()}")
    baseline = get_baseline(cfg, data, settings, open_writer)
    say(f"FP baseline {baseline.key}: top-1 {baseline.metrics['top1']:.2f}")
    model = baseline.fresh_copy()
    status, metrics, extra, plan, report = "ok", None, {}, {}, {}
    writer = open_writer(run_dir / "tb") if world.is_main else None
    if start_over and cell.checkpoint.exists():
        if world.is_main:
            cell.checkpoint.unlink()
            say(f"force=true: run {rid} trains again from the start; its finished checkpoint is removed")
        barrier(world)
    resuming = method.trains and cell.checkpoint.exists()
    calibration = [x.to(settings.device) for x in data.calibration] if method.quantizes else []
    qat = qat_recipe(cfg)
    try:
        if method.quantizes:
            model, plan = quantize(model, method, cfg, calibration, settings, writer, resuming)
            if start_from is not None:
                extra["started_from"] = start_from[0]
                if not resuming:
                    try:
                        load_model_state(start_from[1], model)
                    except CheckpointError as exc:  # the other run's file: never set aside here
                        raise ConfigError(str(exc)) from None
            extra["layer_precision"] = {name: [p.weight_bits, p.input_bits] for name, p in plan.items()}
            extra["signed_data_inputs"] = sorted(name for name, p in plan.items() if p.input_signed)
        else:
            model = place(model, settings)
        facts = RunFacts(baseline.model, plan, None if resuming else sum(len(x) for x in calibration),
                         None if resuming else len(calibration))
        curves = EpochCurves(writer, lambda: evaluate(model, data.val, settings.device, settings.channels_last,
                                                      settings.progress)["top1"],
                             lambda: method.report(model, facts), qat["epochs"])
        if resuming:
            written_by = checkpoint_git(cell.checkpoint)
            if written_by and written_by != provenance["git"]:
                say(f"resuming from a checkpoint written by commit {written_by['commit']} "
                    f"(dirty: {written_by['dirty']}); this code is {provenance['git']['commit']}")
                extra["resumed_from_git"] = written_by
        if method.trains:
            extra["resumed_at_epoch"] = train(model, data.train, qat, run_dir, settings, cfg["seed"],
                                              writer, tag="qat", meta=checkpoint_meta(cfg, rid, plan),
                                              world=world, on_epoch_end=curves)
        if method.quantizes:
            log_values(writer, "finalize", method.finalize(model, calibration))
            report = method.report(model, facts)
            extra.update(report)
        metrics = evaluate(model, data.val, settings.device, settings.channels_last, settings.progress)
        curves.final(metrics["top1"], report)
    except Diverged as exc:
        status, metrics = "diverged", None
        extra["reason"] = str(exc)
    finally:
        if writer is not None:
            log_hparams(writer, cfg, metrics)
            writer.close()
    record = {
        "run_id": rid,
        "status": status,
        "config": cfg,
        "metrics": metrics,
        "fp": {**baseline.metrics, "baseline_key": baseline.key, "weights_sha256": baseline.weights_sha256,
               "source": baseline.source},
        "seed": cfg["seed"],
        "attempts": attempt,
        "wall_time_s": round(time.time() - started, 1),
        **provenance,
        "host": platform.node(),
        "device": str(settings.device),
        "world_size": world.size,
        "effective_batch_size": recipe["batch_size"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    if world.is_main:
        write_record(record, cell.record_path)
    if status == "ok":
        say(f"FP top-1 {baseline.metrics['top1']:.2f} | quantized top-1 {metrics['top1']:.2f} | "
            f"difference {metrics['top1'] - baseline.metrics['top1']:+.2f} | record {cell.record_path}")
    else:
        say(f"run {rid} {status}: {extra.get('reason')}; record {cell.record_path}")
    return record
