"""``qbench-export run=<run id>`` (or ``checkpoint=PATH``): integer deployment of a finished run.

Builds the run's integer reference (:mod:`qbench.export.integer`) and its int8 CPU model
(:mod:`qbench.export.backend`), measures parity with the simulation on the run's test images
(:mod:`qbench.export.parity`) and the packed size (:mod:`qbench.export.size`), and writes them
into the run's record as its ``export`` section. Arguments (``key=value``): ``run`` or
``checkpoint``; ``records_dir`` and ``runs_dir`` where the run's are elsewhere; ``backend=false``
skips the int8 model; ``dataset.<field>`` as in ``qbench-eval`` (``dataset.val_limit=2000``).
Bad input — an unfinished or unknown run, a missing or foreign checkpoint, a method without an
integer form (APoT, the float reference) — is one line and exit code 2, and nothing is written.
"""
from __future__ import annotations

import functools
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml

from qbench.checkpoint import CheckpointError
from qbench.data import Data, run_data
from qbench.export.affine import NoIntegerForm
from qbench.export.fold import skeleton
from qbench.export.integer import integer_reference, layer_forms
from qbench.export.parity import parity
from qbench.export.size import model_size
from qbench.export.source import BadRun, Source, quantized_model, run_paths
from qbench.report.records import write_record
from qbench.run import first_line, settings_of
from qbench.validate import ConfigError, fail

PROG = "qbench-export"
BACKEND = "torchao PT2E, X86InductorQuantizer with the run's grids, Inductor freezing (oneDNN int8 kernels)"


def parse_args(argv: list[str]) -> dict:
    """{``run``, ``checkpoint``, ``records_dir``, ``runs_dir``, ``backend``, ``dataset``: overrides}."""
    args: dict = {"run": None, "checkpoint": None, "records_dir": None, "runs_dir": None, "backend": True,
                  "dataset": {}}
    for arg in argv:
        key, sep, value = arg.partition("=")
        group, dot, field = key.partition(".")
        if sep and key in ("run", "checkpoint", "records_dir", "runs_dir") and value:
            args[key] = value if key == "run" else Path(value)
        elif sep and key == "backend" and value in ("true", "false"):
            args["backend"] = value == "true"
        elif sep and dot and group == "dataset" and field and "." not in field:
            args["dataset"][field] = yaml.safe_load(value)
        else:
            fail(f"{arg!r} is not allowed; use run=ID or checkpoint=PATH, records_dir=DIR, runs_dir=DIR, "
                 "backend=true|false, dataset.<field>=VALUE", PROG)
    if (args["run"] is None) == (args["checkpoint"] is None):
        fail("set one of run=<run id> or checkpoint=PATH", PROG)
    if args["checkpoint"] is not None and not args["checkpoint"].is_file():
        fail(f"checkpoint={args['checkpoint']} is not a file", PROG)
    return args


def dataset_config(source: Source, overrides: dict) -> dict:
    """The run's dataset config with ``overrides`` applied (each must be a field of it)."""
    dataset = dict(source.config["dataset"])
    for field, value in overrides.items():
        if field not in dataset:
            raise BadRun(f"dataset.{field} is not a field of the run's dataset config; allowed: "
                         f"{', '.join(f'dataset.{k}' for k in sorted(dataset))}")
        dataset[field] = value
    return dataset


def export(args: dict) -> tuple[dict, Path]:
    """The run's record with its ``export`` section, and the record's path (not yet written)."""
    source = run_paths(args["run"], args["checkpoint"], args["runs_dir"], args["records_dir"])
    cfg = {**source.config, "runtime": {**source.config["runtime"], "device": "cpu", "channels_last": False}}
    settings_of(cfg)
    dataset = dataset_config(source, args["dataset"])

    @functools.cache
    def data() -> Data:
        """The run's data, loaded once, when first needed (never for a run without an integer form)."""
        return run_data({**cfg, "dataset": dataset})

    model = quantized_model(source, lambda: data().calibration)
    try:
        forms = layer_forms(model, skeleton(model)[1])
    except NoIntegerForm as exc:
        raise NoIntegerForm(f"run {source.record['run_id']} (method {cfg['method']['name']}) has no integer form: "
                            f"{exc}") from None
    val = data().val
    example = next(iter(val.batches(0)))[0]
    started = time.time()
    models = {"simulated": model, "integer": integer_reference(model, example)}
    backend: dict = {"name": BACKEND, "torchao": _torchao_version()}
    if args["backend"]:
        try:  # the import needs torchao: its absence is recorded, not a crash
            from qbench.export.backend import int8_model
            models["int8"] = int8_model(model, example)
        except (ImportError, RuntimeError, AssertionError, NotImplementedError, ValueError, TypeError) as exc:
            backend["error"] = first_line(exc)  # the backend's own failure is a result to record
    else:
        backend["error"] = "skipped (backend=false)"
    measured = parity(models, val)
    replay = None
    if source.checkpoint is None:
        own = measured if not args["dataset"] else parity({"simulated": model}, run_data(source.config).val)
        if own["simulated_top1"] != source.record["metrics"]["top1"]:
            raise BadRun(f"the replayed model's top-1 {own['simulated_top1']:.2f} differs from the record's "
                         f"{source.record['metrics']['top1']:.2f}; not exported")
        replay = f"top-1 {own['simulated_top1']:.2f} on the run's test set equals the record's"
    record = dict(source.record)
    record["export"] = {
        "parity": measured, "size": model_size(model, forms), "backend": backend,
        "integer_top1": measured["integer_top1"], "int8_top1": measured.get("int8_top1"),
        "model_source": "checkpoint" if source.checkpoint else "replayed from the FP baseline", "replay": replay,
        "dataset_overrides": args["dataset"], "wall_time_s": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch_threads": torch.get_num_threads(),
    }
    return record, source.record_path


def _torchao_version() -> str | None:
    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        record, path = export(args)
    except (BadRun, NoIntegerForm, CheckpointError, ConfigError, ValueError) as exc:
        fail(str(exc), PROG)
    write_record(record, path)
    p = record["export"]["parity"]
    int8 = (f"int8 {p['int8_top1']:.2f} (agrees {p['int8_agreement']:.2f}%, "
            f"max |Δlogit| {p['int8_max_logit_diff']:.3g})"
            if "int8_top1" in p else f"int8: {record['export']['backend']['error']}")
    size = record["export"]["size"]
    print(f"[{PROG}] run {record['run_id']}: simulated {p['simulated_top1']:.2f} | integer {p['integer_top1']:.2f} "
          f"(agrees {p['integer_agreement']:.2f}%, max |Δlogit| {p['integer_max_logit_diff']:.3g}) | {int8} | "
          f"{size['packed_bytes'] / 1e6:.2f} MB packed vs {size['float32_bytes'] / 1e6:.2f} MB float32 "
          f"({size['compression']:.1f}×) | record {path}", flush=True)


if __name__ == "__main__":
    main()
