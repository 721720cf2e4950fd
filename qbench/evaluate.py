"""``qbench-eval checkpoint=PATH``: evaluate a run's checkpoint from the checkpoint alone.

The quantized model is rebuilt from the checkpoint's own description (:func:`rebuild`) and
evaluated on the validation data its stored config
names; ``dataset.*`` and ``runtime.*`` fields of that config may be overridden (the data's
location differs between machines: ``dataset.root=/data/imagenet``; ``runtime.device=cpu``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml
from torch import nn

from qbench import phases
from qbench.checkpoint import CheckpointError, checkpoint_plan, load_checkpoint, mismatch_reason
from qbench.data import run_data
from qbench.engine import evaluate
from qbench.methods import create_method
from qbench.models import create_model
from qbench.run import place, settings_of
from qbench.validate import fail

OVERRIDABLE = ("dataset", "runtime")
PROG = "qbench-eval"


def rebuild(path: Path) -> tuple[nn.Module, dict]:
    """The quantized model stored at ``path`` (on the CPU, in eval mode) and the checkpoint's
    ``meta``: the float model built by name, the method's quantizers put on by the stored plan
    (:func:`qbench.phases.prepare`), the state loaded strictly. Raises :class:`CheckpointError`
    when the file cannot be read, carries no description or does not match what it describes."""
    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    plan = checkpoint_plan(path, meta)
    cfg = meta["config"]
    model = create_model(cfg["model"]["name"], cfg["dataset"]["num_classes"], cfg["dataset"]["in_chans"])
    method = create_method(cfg["method"])
    if method.quantizes:
        model = phases.prepare(model, plan, method)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"does not match the model it describes ({mismatch_reason(exc)})") from None
    return model.eval(), meta


def parse_args(argv: list[str]) -> tuple[Path, dict[str, object]]:
    """(checkpoint path, {``group.field``: value}) from ``key=value`` arguments."""
    checkpoint, overrides = None, {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        group, dot, field = key.partition(".")
        if key == "checkpoint" and sep:
            checkpoint = Path(value)
        elif sep and dot and group in OVERRIDABLE and field and "." not in field:
            overrides[key] = yaml.safe_load(value)
        else:
            fail(f"{arg!r} is not allowed; use checkpoint=PATH, dataset.<field>=VALUE or runtime.<field>=VALUE", PROG)
    if checkpoint is None:
        fail("checkpoint must be set (for example checkpoint=runs/runs/<run id>/checkpoint.pt)", PROG)
    if not checkpoint.is_file():
        fail(f"checkpoint={checkpoint} is not a file", PROG)
    return checkpoint, overrides


def evaluate_checkpoint(path: Path, overrides: dict[str, object]) -> tuple[dict[str, float], dict]:
    """Top-1 / top-5 / loss of the model stored at ``path``, and the checkpoint's ``meta``."""
    model, meta = rebuild(path)
    cfg = {**meta["config"], **{group: dict(meta["config"][group]) for group in OVERRIDABLE}}
    for key, value in overrides.items():
        group, _, field = key.partition(".")
        if field not in cfg[group]:
            raise ValueError(f"{key} is not a field of the stored config; allowed: "
                             f"{', '.join(f'{group}.{k}' for k in sorted(cfg[group]))}")
        cfg[group][field] = value
    settings = settings_of(cfg)
    data = run_data(cfg)
    metrics = evaluate(place(model, settings), data.val, settings.device, settings.channels_last,
                       settings.progress)
    return metrics, meta


def main(argv: list[str] | None = None) -> None:
    path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics, meta = evaluate_checkpoint(path, overrides)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc), PROG)
    cfg = meta["config"]
    print(f"[qbench-eval] run {meta['run_id']}: {cfg['method']['name']} {cfg['model']['name']} "
          f"W{cfg['wbits']}A{cfg['abits']} | top-1 {metrics['top1']:.2f} | top-5 {metrics['top5']:.2f} "
          f"| loss {metrics['loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
