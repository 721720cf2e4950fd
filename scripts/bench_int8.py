"""Latency of the int8 CPU model (qbench-export's PT2E backend) against float32, in one process.

    python scripts/bench_int8.py [--checkpoint runs/runs/<run id>/checkpoint.pt] [--batches 1 128]
    python scripts/bench_int8.py --model resnet18 mobilenet_v2 --size 224 28 --chans 3 --classes 1000 \
        --batches 1 64 --out results/deploy.md

The quantized model is the checkpoint's (any uniform-grid run), or without one ``--model`` with
LSQ quantizers at ``--bits`` (edge layers at 8) initialised on random data (latency does not
depend on the values), one network per name given. For each network, input size and batch size
(``--chans``×``--size``×``--size`` inputs; default 28×28 single-channel, Fashion-MNIST's shape)
it times the float32 network (batch norm unfused) eagerly and compiled by Inductor with freezing,
and the int8 model (:func:`qbench.export.backend.int8_model`: oneDNN int8 kernels, also for grids
below 8 bits), in interleaved rounds (about 64 images per model per round), and prints medians and
the ratios compiled-float32 / int8 and eager-float32 / int8; ``--out`` also writes them, with the
command and the machine, as a page.
A benchmark, not a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch._inductor import config as inductor_config

from qbench.evaluate import rebuild
from qbench.export.backend import int8_model
from qbench.export.fold import float_copy
from qbench.models import MODELS, create_model, model_spec
from qbench.provenance import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import quantized  # noqa: E402  (the sibling benchmark's model builder)

PARITY_POINTER = ("Accuracy of the published runs' integer and int8 models against their simulation, and their "
                  "packed size: [README.md, Integer deployment](README.md#integer-deployment) "
                  "(`qbench-table --results-page`, from the records `qbench-export` wrote).")


def quantized_random(name: str, classes: int, chans: int, size: int, bits: int) -> nn.Module:
    """``name`` with LSQ quantizers at ``bits`` (edge layers at 8 bits) initialised on random data,
    built as the training-step benchmark builds its models (``bench_step.quantized``)."""
    fp = create_model(name, classes, chans).eval()
    return quantized(fp, model_spec(name), "lsq", bits, torch.randn(8, chans, size, size)).eval()


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
    parser.add_argument("--checkpoint", type=Path, help="a finished run's checkpoint (default: --model with random LSQ)")
    parser.add_argument("--model", choices=sorted(MODELS), nargs="+", default=["resnet18"])
    parser.add_argument("--bits", type=int, choices=range(2, 9), default=8, help="weight and activation bits of the random model's body")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--chans", type=int, default=1)
    parser.add_argument("--size", type=int, nargs="+", default=[28])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the table, with how it was made, to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        what = f"checkpoint {args.checkpoint}"
        networks = {str(args.checkpoint): lambda size: rebuild(args.checkpoint)[0]}
    else:
        what = f"LSQ W{args.bits}A{args.bits} (edge layers W8A8), random weights and ranges"
        networks = {name: functools.partial(quantized_random, name, args.classes, args.chans, bits=args.bits)
                    for name in args.model}
    setup = (f"torch {torch.__version__}, {args.threads} threads, CPU: {cpu_name()}; {what}; int8 = torchao "
             "PT2E + Inductor with freezing (oneDNN int8 kernels, also for grids below 8 bits); fp32 compiled = "
             f"Inductor with freezing; median of {args.rounds} interleaved rounds")
    print(setup)
    lines = [("| network | batch | input | fp32 eager ms | fp32 compiled ms | int8 ms | compiled fp32 / int8 "
              "| eager fp32 / int8 |"),
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, build in networks.items():
        for size in args.size:
            quantized = build(size=size)
            fp32 = float_copy(quantized)
            for batch in args.batches:
                x = torch.randn(batch, args.chans, size, size)
                with torch.no_grad(), inductor_config.patch(freezing=True):
                    compiled = torch.compile(fp32)
                    compiled(x)
                models = {"fp32 eager": fp32, "fp32 compiled": compiled, "int8": int8_model(quantized, x)}
                ms = median_ms(models, x, args.rounds, calls=max(1, 64 // batch))
                lines.append(f"| {name} | {batch} | {args.chans}×{size}×{size} | {ms['fp32 eager']:.2f} | "
                             f"{ms['fp32 compiled']:.2f} | {ms['int8']:.2f} | "
                             f"{ms['fp32 compiled'] / ms['int8']:.2f}× | {ms['fp32 eager'] / ms['int8']:.2f}× |")
                print(lines[-1], flush=True)
                torch._dynamo.reset()
    if args.out:
        command = shlex.join(["python", "scripts/bench_int8.py", *sys.argv[1:]])
        args.out.write_text(f"# Deployment latency: int8 CPU model against float32\n\n`{command}`\n\n"
                            f"{datetime.date.today().isoformat()}, {setup}.\n\n" + "\n".join(lines) + "\n\n"
                            f"{PARITY_POINTER}\n")


if __name__ == "__main__":
    main()
