"""One experiment, from a resolved config to a record: ``run(cfg) -> record``."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from qbench.baseline import get_baseline
from qbench.data import build_data
from qbench.engine import Diverged, TrainSettings, evaluate, train
from qbench.identity import run_id
from qbench.methods import Method, create_method
from qbench.models import model_spec
from qbench.quant.convert import EdgeLayerPolicy, LayerPrecision, plan_precision
from qbench.quant.kernels import compile_kernels
from qbench.report.records import git_state, read_record, versions, write_record
from qbench.validate import validate


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def qat_recipe(cfg: dict) -> dict:
    """The fine-tuning recipe with the weight decay chosen for this run's weight bits."""
    recipe = dict(cfg["recipe"]["qat"])
    by_bits = recipe.pop("weight_decay_by_wbits", None) or {}
    by_bits = {int(k): v for k, v in by_bits.items()}
    if cfg["wbits"] in by_bits:
        recipe["weight_decay"] = by_bits[cfg["wbits"]]
    return recipe


def _place(model: torch.nn.Module, settings: TrainSettings) -> torch.nn.Module:
    model = model.to(settings.device)
    return model.to(memory_format=torch.channels_last) if settings.channels_last else model


def prepare_and_calibrate(model: torch.nn.Module, method: Method, cfg: dict,
                          calibration: list[torch.Tensor], settings: TrainSettings, writer,
                          resuming: bool) -> tuple[torch.nn.Module, dict[str, LayerPrecision]]:
    """Swap layers by the precision policy, move the model to its device and initialise its
    quantizers on the calibration images, with batch norm as fine-tuning will run it (skipped
    when resuming: the checkpoint holds them).
    Every initial value goes to TensorBoard under ``init/``."""
    spec = model_spec(cfg["model"]["name"])
    q = cfg["quant"]
    plan = plan_precision(model, cfg["wbits"], cfg["abits"], spec.first_layer, spec.last_layer,
                          EdgeLayerPolicy(**q["first_layer"]), EdgeLayerPolicy(**q["last_layer"]),
                          tuple(q["skip_layers"]))
    model = _place(method.prepare(model, plan), settings)
    if not resuming:
        batches = (x.to(settings.device) for x in calibration)
        train_mode = method.trains and not cfg["recipe"]["qat"].get("freeze_bn", False)
        for name, values in method.calibrate(model, batches, train_mode).items():
            for param, value in values.items():
                writer.add_scalar(f"init/{name}.{param}", value, 0)
    return model, plan


def say(message: str) -> None:
    print(f"[qbench] {message}", flush=True)


def run(cfg: dict) -> dict:
    """Run one experiment and return its record (also written to ``paths.records_dir``).

    The record's ``method`` holds every method option as used, presets resolved (LSQ+
    ``config: 4`` appears with its ``act_signed``, ``act_asymmetric`` and ``offset``), and the
    run's identity is computed from that, so two spellings of one experiment are one run.

    A cell whose record already says ``ok`` is reported and skipped unless ``force`` is set;
    an interrupted one resumes from its checkpoint in ``<runs_dir>/runs/<run id>/``.
    """
    validate(cfg)
    method = create_method(cfg["method"])
    cfg = {**cfg, "method": method.options()}
    rid = run_id(cfg, method.quantizes)
    record_path = Path(cfg["paths"]["records_dir"]) / f"{rid}.json"
    if record_path.exists() and not cfg["force"]:
        previous = read_record(record_path)
        if previous["status"] == "ok":
            say(f"run {rid} is already done: top-1 {previous['metrics']['top1']:.2f} "
                f"(FP {previous['fp']['top1']:.2f}); record {record_path} (force=true reruns it)")
            return previous
    rt = cfg["runtime"]
    compile_kernels(rt["compile_quantizers"])
    if rt["threads"]:
        torch.set_num_threads(rt["threads"])
    settings = TrainSettings(_device(rt["device"]), rt["channels_last"], rt["progress"], rt["log_every"])
    run_dir = Path(cfg["paths"]["runs_dir"]) / "runs" / rid
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    started = time.time()
    provenance = {"versions": versions(), "git": git_state()}
    torch.manual_seed(cfg["seed"])
    recipe = cfg["recipe"]
    data = build_data(cfg["dataset"], recipe["batch_size"], recipe["eval_batch_size"],
                      cfg["calib"]["num_images"], cfg["calib"]["seed"], cfg["seed"])
    say(f"run {rid}: {cfg['method']['name']} {cfg['model']['name']} on {cfg['dataset']['name']}"
        + (f" W{cfg['wbits']}A{cfg['abits']}" if method.quantizes else ""))
    baseline = get_baseline(cfg, data, settings, _tensorboard)
    say(f"FP baseline {baseline.key}: top-1 {baseline.metrics['top1']:.2f}")
    model = baseline.fresh_copy()
    status, extra = "ok", {}
    writer = _tensorboard(run_dir / "tb")
    try:
        if method.quantizes:
            model, plan = prepare_and_calibrate(model, method, cfg, data.calibration, settings,
                                                writer, resuming=(run_dir / "checkpoint.pt").exists())
            extra["layer_precision"] = {name: [p.weight_bits, p.input_bits] for name, p in plan.items()}
            extra["signed_data_inputs"] = sorted(name for name, p in plan.items() if p.input_signed)
        else:
            model = _place(model, settings)
        if method.trains:
            resumed_at = train(model, data.train, qat_recipe(cfg), run_dir, settings, cfg["seed"], writer, tag="qat")
            extra["resumed_at_epoch"] = resumed_at
        if method.quantizes:
            extra.update(method.report(model))
        metrics = evaluate(model, data.val, settings.device, settings.channels_last, settings.progress)
    except Diverged as exc:
        status, metrics = "diverged", None
        extra["reason"] = str(exc)
    finally:
        writer.close()
    record = {
        "run_id": rid,
        "status": status,
        "config": cfg,
        "metrics": metrics,
        "fp": {**baseline.metrics, "baseline_key": baseline.key, "weights_sha256": baseline.weights_sha256},
        "seed": cfg["seed"],
        "wall_time_s": round(time.time() - started, 1),
        **provenance,
        "host": platform.node(),
        "device": str(settings.device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    write_record(record, record_path)
    if status == "ok":
        say(f"FP top-1 {baseline.metrics['top1']:.2f} | quantized top-1 {metrics['top1']:.2f} | "
            f"difference {metrics['top1'] - baseline.metrics['top1']:+.2f} | record {record_path}")
    else:
        say(f"run {rid} {status}: {extra.get('reason')}; record {record_path}")
    return record
