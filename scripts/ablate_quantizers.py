"""Where a quantized run loses its accuracy: the top-1 of its checkpoint with one group of
quantizers switched off (that group's weights, or its layers' inputs, left in float), in one process.

    python scripts/ablate_quantizers.py --run b29b5830051a eeefe5ec15e6 \
        --out results/ablation_faq_mobilenet_v2_w4a4.md

Groups by the layer's role: the first and the last quantized layer, depthwise convs (one group
per channel), pointwise (1×1) convs, the other convs and linear layers; inputs also by the sign
of their grid (a signed grid spends one of its bits on negative values). Each row is evaluated on
the run's whole test set with nothing retrained, so a row's gain over the run bounds what that
group's quantization costs as trained; it is a diagnosis, not a result a method can claim.
A measurement, not a test; it reads checkpoints under ``runs/runs`` (``--runs-dir``).
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from qbench.data import run_data
from qbench.engine import evaluate
from qbench.evaluate import rebuild
from qbench.quant.base import Quantizer
from qbench.quant.calibrate import quantized_layers
from qbench.run import settings_of
from qbench.validate import fail

ROLES = ("first layer", "last layer", "depthwise convs", "pointwise (1×1) convs", "other convs and linear layers")


def role(name: str, layer: nn.Module, names: list[str]) -> str:
    """The one role of :data:`ROLES` that the layer ``name`` plays among the quantized ``names``."""
    if name == names[0]:
        return "first layer"
    if name == names[-1]:
        return "last layer"
    if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels:
        return "depthwise convs"
    if isinstance(layer, nn.Conv2d) and all(k == 1 for k in layer.kernel_size):
        return "pointwise (1×1) convs"
    return "other convs and linear layers"


def _signed(q: Quantizer) -> bool:
    return q.qrange[0] < 0


def ablations(model: nn.Module) -> dict[str, list[Quantizer]]:
    """{row label: the quantizers that row switches off}, the run as trained first."""
    layers = quantized_layers(model)
    names = list(layers)
    rows: dict[str, list[Quantizer]] = {"none (the run as trained)": []}
    for part, attribute in (("weights", "weight_quantizer"), ("inputs", "input_quantizer")):
        quantizers = {name: getattr(layer, attribute) for name, layer in layers.items()}
        for label in ROLES:
            rows[f"{part} of {label}"] = [q for name, q in quantizers.items()
                                          if isinstance(q, Quantizer) and role(name, layers[name], names) == label]
        rows[f"{part} of every layer"] = [q for q in quantizers.values() if isinstance(q, Quantizer)]
    inputs = [layer.input_quantizer for layer in layers.values() if isinstance(layer.input_quantizer, Quantizer)]
    rows["inputs on a signed grid"] = [q for q in inputs if _signed(q)]
    rows["inputs on an unsigned grid"] = [q for q in inputs if not _signed(q)]
    return {label: quantizers for label, quantizers in rows.items() if quantizers or label.startswith("none")}


@torch.no_grad()
def ablate(checkpoint: Path) -> tuple[dict, dict[str, tuple[int, float]]]:
    """(the checkpoint's meta, {row: (quantizers off, top-1)})."""
    model, meta = rebuild(checkpoint)
    cfg = meta["config"]
    settings = settings_of({**cfg, "runtime": {**cfg["runtime"], "device": "cpu"}})
    data = run_data(cfg)
    out = {}
    for label, quantizers in ablations(model).items():
        for q in quantizers:
            q.enabled = False
        out[label] = (len(quantizers), evaluate(model, data.val, settings.device, settings.channels_last)["top1"])
        for q in quantizers:
            q.enabled = True
        print(f"{meta['run_id']} | {label}: {out[label][1]:.2f}", flush=True)
    return meta, out


def page(command: str, results: list[tuple[dict, dict[str, tuple[int, float]]]]) -> str:
    """The markdown page: one row per ablation, one column per run, the mean and its gain."""
    first = results[0][0]["config"]
    runs = ", ".join(f"{meta['run_id']} (seed {meta['config']['seed']})" for meta, _ in results)
    head = [
        "# Quantizer ablation: which layers cost the accuracy",
        "",
        f"`{command}`",
        "",
        f"{datetime.date.today().isoformat()}; {first['method']['name']} {first['model']['name']} "
        f"W{first['wbits']}A{first['abits']} on {first['dataset']['name']}, recipe {first['recipe']['name']}; "
        f"runs {runs}. Top-1 (%) on the whole test set with one group of quantizers switched off (left in "
        "float) and nothing retrained; gain = the row's mean minus the run's.",
        "",
        "| switched off | quantizers | " + " | ".join(meta["run_id"] for meta, _ in results) + " | mean | gain |",
        "|---|---:|" + "---:|" * (len(results) + 2),
    ]
    base = statistics.mean(rows["none (the run as trained)"][1] for _, rows in results)
    lines = []
    for label, (count, _) in results[0][1].items():
        values = [rows[label][1] for _, rows in results]
        mean = statistics.mean(values)
        lines.append(f"| {label} | {count} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {mean:.2f} | {mean - base:+.2f} |")
    return "\n".join(head + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="+", required=True, help="run ids whose checkpoints to ablate")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/runs"))
    parser.add_argument("--out", type=Path, help="write the page here")
    args = parser.parse_args()
    missing = [r for r in args.run if not (args.runs_dir / r / "checkpoint.pt").is_file()]
    if missing:
        fail(f"no checkpoint for run {', '.join(missing)} under {args.runs_dir}", "ablate_quantizers.py")
    results = [ablate(args.runs_dir / run / "checkpoint.pt") for run in args.run]
    text = page(shlex.join(["python", "scripts/ablate_quantizers.py", *sys.argv[1:]]), results)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
