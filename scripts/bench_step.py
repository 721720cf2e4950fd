"""Time one training step of a quantized network against the float one, in one process.

    python scripts/bench_step.py                         # ResNet18, LSQ W4A4, batch 128, 28 px
    python scripts/bench_step.py --methods lsq apot      # both against FP and against each other
    python scripts/bench_step.py --model mobilenet_v2 --bits 2 --no-channels-last

Every model sees the same batch; after warm-up, the FP and quantized steps alternate so that
machine noise hits all alike; the medians and their ratios are printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from qbench.methods import create_method
from qbench.models import create_model, model_spec
from qbench.phases import prepare
from qbench.quant.convert import EdgeLayerPolicy, plan_precision
from qbench.quant.kernels import compile_kernels


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--methods", nargs="+", default=["lsq"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--chans", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--eager", action="store_true", help="quantizer kernels not compiled")
    args = parser.parse_args()
    compile_kernels(not args.eager)
    torch.manual_seed(0)
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    x = torch.randn(args.batch, args.chans, args.size, args.size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,))
    fp = create_model(args.model, 10, args.chans)
    spec = model_spec(args.model)
    models = {"fp": fp.to(memory_format=fmt).train()}
    for name in args.methods:
        quant = copy.deepcopy(fp)
        plan = plan_precision(quant, args.bits, args.bits, spec.first_layer, spec.last_layer,
                              EdgeLayerPolicy(), EdgeLayerPolicy())
        method = create_method({"name": name})
        quant = prepare(quant, plan, method)
        method.initialize(quant, [x[:32]], train_mode=False)
        models[name] = quant.to(memory_format=fmt).train()
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.warmup + args.repeats):
        for k, m in models.items():
            t = step_time(m, opts[k], x, y)
            if i >= args.warmup:
                times[k].append(t)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.model}, batch {args.batch}, {args.chans}x{args.size}x{args.size}, "
          f"{'contiguous' if args.no_channels_last else 'channels_last'}, {torch.get_num_threads()} threads, "
          f"quantizer kernels {'eager' if args.eager else 'compiled'}, median of {args.repeats}")
    for name, value in ms.items():
        label = "FP" if name == "fp" else f"{name} W{args.bits}A{args.bits}"
        print(f"{label + ' training step:':32s}{value:8.1f} ms")
    for i, name in enumerate(args.methods):
        print(f"ratio {name} / FP: {ms[name] / ms['fp']:.2f}x")
        for other in args.methods[:i]:
            print(f"ratio {name} / {other}: {ms[name] / ms[other]:.2f}x")


if __name__ == "__main__":
    main()
