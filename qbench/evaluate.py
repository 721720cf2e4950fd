"""``qbench-eval checkpoint=PATH``: evaluate a run's checkpoint from the checkpoint alone.

The quantized model is rebuilt from the checkpoint's own description
(:func:`qbench.checkpoint.rebuild`) and evaluated on the validation data its stored config
names; ``dataset.*`` and ``runtime.*`` fields of that config may be overridden (the data's
location differs between machines: ``dataset.root=/data/imagenet``; ``runtime.device=cpu``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from qbench.checkpoint import rebuild
from qbench.data import build_data
from qbench.engine import CheckpointError, evaluate
from qbench.run import place, settings_of

OVERRIDABLE = ("dataset", "runtime")


def fail(message: str) -> None:
    print(f"qbench-eval: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
            fail(f"{arg!r} is not allowed; use checkpoint=PATH, dataset.<field>=VALUE or runtime.<field>=VALUE")
    if checkpoint is None:
        fail("checkpoint must be set (for example checkpoint=runs/runs/<run id>/checkpoint.pt)")
    if not checkpoint.is_file():
        fail(f"checkpoint={checkpoint} is not a file")
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
    recipe = cfg["recipe"]
    data = build_data(cfg["dataset"], recipe["batch_size"], recipe["eval_batch_size"],
                      cfg["calib"]["num_images"], cfg["calib"]["seed"], cfg["seed"])
    metrics = evaluate(place(model, settings), data.val, settings.device, settings.channels_last,
                       settings.progress)
    return metrics, meta


def main(argv: list[str] | None = None) -> None:
    path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics, meta = evaluate_checkpoint(path, overrides)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    cfg = meta["config"]
    print(f"[qbench-eval] run {meta['run_id']}: {cfg['method']['name']} {cfg['model']['name']} "
          f"W{cfg['wbits']}A{cfg['abits']} | top-1 {metrics['top1']:.2f} | top-5 {metrics['top5']:.2f} "
          f"| loss {metrics['loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
