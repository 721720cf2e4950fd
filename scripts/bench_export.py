"""Latency of the int8 CPU model (qbench-export's PT2E backend) against float32, in one process.

    python scripts/bench_export.py [--checkpoint runs/runs/<run id>/checkpoint.pt] [--batches 1 128]

The quantized model is the checkpoint's (any uniform-grid run), or without one ResNet18 with
LSQ W8A8 quantizers initialised on random data (latency does not depend on the values). For
each batch size (28×28 single-channel inputs, Fashion-MNIST's shape) it times the float32
network (batch norm unfused) eagerly and compiled by Inductor with freezing, and the int8 model
(:func:`qbench.export.backend.int8_model`: oneDNN int8 kernels, also for grids below 8 bits),
in interleaved rounds, and prints medians and the ratios compiled-float32 / int8 and
eager-float32 / int8. A benchmark, not a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch._inductor import config as inductor_config

from qbench import phases
from qbench.evaluate import rebuild
from qbench.export.backend import int8_model
from qbench.export.fold import float_copy
from qbench.methods import create_method
from qbench.models import create_model
from qbench.quant.convert import EdgeLayerPolicy, plan_precision


def quantized_resnet18() -> nn.Module:
    """ResNet18 (10 classes, 1 channel) with LSQ W8A8 quantizers initialised on random data."""
    model = create_model("resnet18", 10, 1).eval()
    method = create_method({"name": "lsq"})
    plan = plan_precision(model, 8, 8, "conv1", "fc", EdgeLayerPolicy(), EdgeLayerPolicy())
    model = phases.prepare(model, plan, method)
    method.initialize(model, [torch.randn(64, 1, 28, 28)], False)
    return model.eval()


@torch.no_grad()
def median_ms(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median over ``rounds`` of the mean time of ``calls`` calls, models interleaved per round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(calls):
                model(x)
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a finished run's checkpoint (default: LSQ W8A8 ResNet18)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quantized = rebuild(args.checkpoint)[0] if args.checkpoint else quantized_resnet18()
    fp32 = float_copy(quantized)
    print(f"torch {torch.__version__}, {args.threads} threads; int8 = torchao PT2E + Inductor (oneDNN int8 kernels)")
    for batch in args.batches:
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad(), inductor_config.patch(freezing=True):
            compiled = torch.compile(fp32)
            compiled(x)
        models = {"fp32 eager": fp32, "fp32 compiled": compiled, "int8": int8_model(quantized, x)}
        calls = max(1, 256 // batch)
        ms = median_ms(models, x, args.rounds, calls)
        print(f"batch {batch:4d} (28×28): " + " | ".join(f"{name} {t:.2f} ms" for name, t in ms.items())
              + f" | compiled fp32 / int8 {ms['fp32 compiled'] / ms['int8']:.2f}×"
              + f" | eager fp32 / int8 {ms['fp32 eager'] / ms['int8']:.2f}×", flush=True)


if __name__ == "__main__":
    main()
