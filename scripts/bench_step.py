"""Time training steps of every model × QAT method against the float model, and their peak memory.

    python scripts/bench_step.py                                  # every model × QAT method, W4A4
    python scripts/bench_step.py --models resnet18 --methods lsq apot
    python scripts/bench_step.py --out results/bench.md           # also write the table page
    python scripts/bench_step.py --compile-model --out results/bench-compiled.md  # whole networks compiled
    python scripts/bench_step.py --fuse-batch-norm --out results/bench-fused.md    # + runtime.fuse_batch_norm rows
    python scripts/bench_step.py --split --methods lsq --out results/bench-split.md  # + weights-only, inputs-only rows
    python scripts/bench_step.py --native --methods lsq lsqplus --out results/bench-native.md  # + runtime.native_kernels rows
    python scripts/bench_step.py --native --models resnet18 --methods lsq apot --out results/bench-native-apot.md
    python scripts/bench_step.py --glibc-malloc                   # glibc malloc as it comes
    python scripts/bench_step.py --native --recompute-weights --models resnet18 --methods lsq lsqplus \
        --out results/bench-recompute.md                          # + runtime.recompute_weights in the native rows

Time: per model, one process builds the FP model and one quantized copy per method; every model
sees the same batch (batch 128, 1×28×28, channels_last by default); after warm-up, the FP and
quantized steps alternate so that machine noise hits all alike; medians and ratios are reported.
Evaluation: the same networks in eval mode without gradients, one batch of ``--eval-batch`` images
each in turn, after the training rounds (their weights as training left them).
Memory: a fresh child process (``--memory-only``) per (model, method) and one per model for FP
builds its one network, takes one warm-up step (compiling, or loading compiled kernels), resets its
peak RSS (``VmHWM``), runs a few steps and reports the peak, so networks do not share a heap and
the compiler's memory is not counted.
With ``--fuse-batch-norm`` each method also gets a row ``METHOD+fused`` (``runtime.fuse_batch_norm``);
with ``--split``, rows ``METHOD:weights`` and ``METHOD:inputs``: where the method's time goes;
with ``--native``, a row ``METHOD+native`` whose LSQ / LSQ+ and APoT quantizers run the C++ ops
(``runtime.native_kernels``), switched on for that row's steps only; with both, also a row
``METHOD+fused+native``.
If Brevitas is importable, its learned-scale W4A4 layers are timed beside ours.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qbench.allocator import heap_in_use, keep_freed_memory
from qbench.methods import METHODS, create_method
from qbench.models import MODELS, ModelSpec, create_model, model_spec
from qbench.phases import prepare
from qbench.provenance import cpu_name
from qbench.quant.convert import EdgeLayerPolicy, plan_precision
from qbench.quant.fused import fuse_activation_quantizers
from qbench.quant.kernels import compile_kernels
from qbench.quant.layers import QUANT_LAYERS, recompute_weights
from qbench.quant.native import use_native_kernels

BREVITAS = "brevitas"
FP = "fp"
FUSED = "+fused"  # a method's row with runtime.fuse_batch_norm
NATIVE = "+native"  # a method's row with runtime.native_kernels
LEFT_FLOAT = {":weights": "input_quantizer", ":inputs": "weight_quantizer"}  # split rows: what stays float


@dataclass(frozen=True)
class Row:
    """One model × method: median training-step and evaluation-batch times (ms), and peak RSS and
    peak heap in use of separate processes (MiB)."""

    model: str
    method: str
    fp_ms: float
    qat_ms: float
    fp_eval_ms: float
    qat_eval_ms: float
    fp_mib: float
    qat_mib: float
    fp_heap_mib: float
    qat_heap_mib: float


def qat_methods() -> list[str]:
    """The registered methods that the shared trainer fine-tunes."""
    return [name for name, cls in METHODS.items() if cls.trains and cls.quantizes]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sweep's options; ``--memory-only`` turns the process into one memory child."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=qat_methods())
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-batch", type=int, default=512, help="images per evaluation batch (recipe local's)")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--chans", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="training steps, after one warm-up step, over which a child reads its peak RSS")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--eager", action="store_true", help="quantizer kernels not compiled")
    parser.add_argument("--fuse-batch-norm", action="store_true",
                        help="beside each method, a row METHOD+fused: batch norm, activation and LSQ/LSQ+ input "
                             "quantizer fused (runtime.fuse_batch_norm), timed in the same process")
    parser.add_argument("--split", action="store_true",
                        help="beside each method, rows METHOD:weights and METHOD:inputs, the method with only its "
                             "weight / only its input quantizers, timed in the same process")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="leave glibc's malloc as it is instead of runtime.keep_freed_memory's setting")
    parser.add_argument("--native", action="store_true",
                        help="beside each method, a row METHOD+native: LSQ / LSQ+ and APoT quantizers as C++ ops "
                             "(runtime.native_kernels), timed in the same process")
    parser.add_argument("--recompute-weights", action="store_true",
                        help="the native rows' LSQ / LSQ+ conv weights quantized again in the backward instead of kept "
                             "(runtime.recompute_weights)")
    parser.add_argument("--compile-model", action="store_true",
                        help="torch.compile every whole network, FP and QAT alike (quantizer kernels traced with it)")
    parser.add_argument("--memory-only", metavar="METHOD",
                        help="child mode: build only the first model with METHOD ('fp' for float), print peak RSS in MiB")
    parser.add_argument("--out", type=Path, help="also write the table, with how it was made, to this Markdown file")
    return parser.parse_args(argv)


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    """channels_last unless ``--no-channels-last``."""
    return torch.contiguous_format if args.no_channels_last else torch.channels_last


def batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The one seeded batch every network sees."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.chans, args.size, args.size).contiguous(memory_format=memory_format(args))
    return x, torch.randint(0, 10, (args.batch,))


def quantized(fp: nn.Module, spec: ModelSpec, method_name: str, bits: int, x: torch.Tensor,
              fuse_batch_norm: bool = False) -> nn.Module:
    """A copy of ``fp`` quantized by ``method_name`` at ``bits`` (edge layers by the default
    ``EdgeLayerPolicy``), its quantizers initialised on a slice of ``x``; with ``fuse_batch_norm``,
    its batch norms fused with the next layer's input quantizer as ``runtime.fuse_batch_norm`` does."""
    if method_name == BREVITAS:
        return brevitas_quantized(fp, spec, bits)
    quant = copy.deepcopy(fp)
    method = create_method({"name": method_name})
    plan = plan_precision(quant, bits, bits, spec.first_layer, spec.last_layer, EdgeLayerPolicy(), EdgeLayerPolicy())
    quant = prepare(quant, method.adjust_plan(quant, plan), method)
    if fuse_batch_norm:
        fuse_activation_quantizers(quant)
    method.initialize(quant, [x[:32]], train_mode=False)
    return quant


def brevitas_quantized(fp: nn.Module, spec: ModelSpec, bits: int) -> nn.Module:
    """A copy of ``fp`` whose plain conv/linear layers are Brevitas layers with learned-scale
    (parameter from stats) ``bits``-bit weights and inputs, the edge layers at 8 bits."""
    from brevitas import nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat

    model = copy.deepcopy(fp)
    for name, layer in list(model.named_modules()):
        if type(layer) not in (nn.Conv2d, nn.Linear):
            continue
        b = 8 if name in (spec.first_layer, spec.last_layer) else bits
        quant = {"weight_quant": Int8WeightPerTensorFloat, "weight_bit_width": b,
                 "weight_scaling_impl_type": ScalingImplType.PARAMETER_FROM_STATS,
                 "input_quant": Int8ActPerTensorFloat, "input_bit_width": b}
        if isinstance(layer, nn.Conv2d):
            new = qnn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                  bias=layer.bias is not None, **quant)
        else:
            new = qnn.QuantLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, **quant)
        new.load_state_dict(layer.state_dict(), strict=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def row_model(fp: nn.Module, spec: ModelSpec, row: str, bits: int, x: torch.Tensor) -> nn.Module:
    """The network of one row: ``METHOD``, ``METHOD+fused`` (:data:`FUSED`), ``METHOD+native`` (the
    method's network; :func:`select_kernels` switches the op), or ``METHOD:weights`` / ``METHOD:inputs``,
    the method with only its weight / only its input quantizers (:data:`LEFT_FLOAT`)."""
    method, left_float = row.removesuffix(NATIVE), None
    for suffix, quantizer in LEFT_FLOAT.items():
        if row.endswith(suffix):
            method, left_float = row.removesuffix(suffix), quantizer
    model = quantized(fp, spec, method.removesuffix(FUSED), bits, x, method.endswith(FUSED))
    if left_float is not None:
        for layer in model.modules():
            if isinstance(layer, QUANT_LAYERS):
                setattr(layer, left_float, nn.Identity())
    return model


def build(model_name: str, methods: list[str], args: argparse.Namespace, x: torch.Tensor) -> dict[str, nn.Module]:
    """The FP model (when ``fp`` is in ``methods``) and one quantized copy per other method, in training mode."""
    torch.manual_seed(0)
    fp = create_model(model_name, 10, args.chans)
    spec = model_spec(model_name)
    models = {m: fp if m == FP else row_model(fp, spec, m, args.bits, x) for m in methods}
    models = {k: m.to(memory_format=memory_format(args)).train() for k, m in models.items()}
    return {k: torch.compile(m) for k, m in models.items()} if args.compile_model else models


def select_kernels(row: str) -> None:
    """The C++ ops for a ``METHOD+native`` row's steps, the Python path for every other row."""
    use_native_kernels(row.endswith(NATIVE))


def step_time(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one forward, backward and SGD step of ``model`` on ``(x, y)``."""
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def alternate_steps(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                    warmup: int, repeats: int) -> dict[str, float]:
    """Median step time (ms) per model after ``warmup`` rounds, the models stepping in turn each round."""
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + repeats):
        for k, m in models.items():
            select_kernels(k)
            t = step_time(m, opts[k], x, y)
            if i >= warmup:
                times[k].append(t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def alternate_evaluations(models: dict[str, nn.Module], x: torch.Tensor, warmup: int,
                          repeats: int) -> dict[str, float]:
    """Median time (ms) of one evaluation batch per model after ``warmup`` rounds, in turn each round;
    the models are left in training mode."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
        for i in range(warmup + repeats):
            for k, m in models.items():
                select_kernels(k)
                start = time.perf_counter()
                m(x)
                if i >= warmup:
                    times[k].append(time.perf_counter() - start)
    for m in models.values():
        m.train()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current resident set (Linux ``clear_refs``, value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's peak resident set size since its exec or :func:`reset_peak_rss` (``VmHWM``):
    unlike ``getrusage(...).ru_maxrss``, which Linux carries over from the forking parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS needs Linux")


class HeapPeak:
    """The largest :func:`~qbench.allocator.heap_in_use` that a thread sampling it every
    ``interval`` seconds sees while the ``with`` block runs (torch's ops release the GIL, so it
    samples inside them too): the memory the step's tensors hold, whatever the allocator keeps."""

    def __init__(self, interval: float = 2e-4) -> None:
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, heap_in_use() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> HeapPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def memory_only(args: argparse.Namespace) -> None:
    """Child mode: build one network, take one step (which compiles the quantizer kernels, or
    loads them from the compile cache), then ``--memory-steps`` steps, and print the peak RSS and
    the peak heap in use (:class:`HeapPeak`) of those in MiB: the training step's memory, not the
    compiler's."""
    x, y = batch(args)
    models = build(args.models[0], [args.memory_only], args, x)
    alternate_steps(models, x, y, 0, 1)
    reset_peak_rss()
    with HeapPeak() as heap:
        alternate_steps(models, x, y, 0, args.memory_steps)
    print(f"{peak_rss_mib():.1f} {heap.peak / 2**20:.1f}")


def child_peak_mib(model_name: str, method: str, args: argparse.Namespace) -> tuple[float, float]:
    """Peak RSS and peak heap in use (MiB) of a fresh process that builds and steps only
    ``model_name`` with ``method``."""
    cmd = [sys.executable, __file__, "--memory-only", method, "--models", model_name,
           "--bits", str(args.bits), "--batch", str(args.batch), "--size", str(args.size),
           "--chans", str(args.chans), "--memory-steps", str(args.memory_steps)]
    cmd += ["--no-channels-last"] * args.no_channels_last + ["--eager"] * args.eager
    cmd += ["--compile-model"] * args.compile_model + ["--glibc-malloc"] * args.glibc_malloc
    cmd += ["--recompute-weights"] * args.recompute_weights
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rss, heap = out.split()[-2:]
    return float(rss), float(heap)


def bench_model(model_name: str, methods: list[str], args: argparse.Namespace) -> list[Row]:
    """Time FP and every method on ``model_name`` in this process, then each one's memory in its own child."""
    x, y = batch(args)
    models = build(model_name, [FP, *methods], args, x)
    ms = alternate_steps(models, x, y, args.warmup, args.repeats)
    eval_x = batch(argparse.Namespace(**{**vars(args), "batch": args.eval_batch}))[0]
    eval_ms = alternate_evaluations(models, eval_x, args.warmup, args.repeats // 2)
    fp_mib = child_peak_mib(model_name, FP, args)
    rows = []
    for m in methods:
        qat_mib = child_peak_mib(model_name, m, args)
        rows.append(Row(model_name, m, ms[FP], ms[m], eval_ms[FP], eval_ms[m], fp_mib[0], qat_mib[0], fp_mib[1],
                        qat_mib[1]))
    return rows


def table(rows: list[Row], bits: int) -> str:
    """The rows as a Markdown table: step times and their ratio, evaluation times and theirs, peak RSS
    and peak heap in use with their differences."""
    lines = ["| model | method | FP ms | QAT ms | ratio | eval FP ms | eval QAT ms | eval ratio "
             "| peak RSS FP MiB | QAT MiB | Δ MiB | peak heap FP MiB | QAT MiB | Δ MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.method} W{bits}A{bits} | {r.fp_ms:.1f} | {r.qat_ms:.1f} | "
                     f"{r.qat_ms / r.fp_ms:.2f}x | {r.fp_eval_ms:.1f} | {r.qat_eval_ms:.1f} | "
                     f"{r.qat_eval_ms / r.fp_eval_ms:.2f}x | {r.fp_mib:.0f} | {r.qat_mib:.0f} | "
                     f"{r.qat_mib - r.fp_mib:+.0f} | {r.fp_heap_mib:.0f} | {r.qat_heap_mib:.0f} | "
                     f"{r.qat_heap_mib - r.fp_heap_mib:+.0f} |")
    return "\n".join(lines)


def kernels_note(args: argparse.Namespace) -> str:
    """How the networks ran: eager with eager or compiled quantizer kernels, or compiled whole."""
    if args.compile_model:
        return "every whole network compiled by torch.compile (FP and QAT alike, quantizer kernels traced with it)"
    recompute = ", LSQ / LSQ+ conv weights recomputed in the backward: runtime.recompute_weights"
    native = (f"; rows METHOD{NATIVE}: LSQ / LSQ+ and APoT quantizers as one C++ op each (runtime.native_kernels"
              f"{recompute * args.recompute_weights})" if args.native else "")
    fused = (f"; rows METHOD{FUSED}: batch norm, activation and LSQ/LSQ+ input quantizer fused "
             "(runtime.fuse_batch_norm)") if args.fuse_batch_norm else ""
    split = ("; rows METHOD:weights / METHOD:inputs: only the weights / only the layer inputs quantized"
             if args.split else "")
    allocator = ("glibc's malloc as configured by default" if args.glibc_malloc
                 else "freed memory kept for reuse (runtime.keep_freed_memory)")
    return f"quantizer kernels {'eager' if args.eager else 'compiled'}{native}{fused}{split}; {allocator}"


def setup_line(args: argparse.Namespace, brevitas_note: str) -> str:
    """One paragraph saying how the numbers were measured."""
    return (f"Batch {args.batch}, {args.chans}×{args.size}×{args.size}, "
            f"{'contiguous' if args.no_channels_last else 'channels_last'}, "
            f"{kernels_note(args)}, edge layers at 8 bits; "
            f"step times: median of {args.repeats} rounds after {args.warmup} warm-up rounds, each round one step "
            f"of the model's FP network (one FP column per model) and of each method's in turn; evaluation: "
            f"median of {args.repeats // 2} rounds of one batch of {args.eval_batch} without gradients; "
            f"peak RSS: one fresh process per cell, over {args.memory_steps} steps after one warm-up step "
            f"(the peak reset after it, so that compiling is not counted); peak heap: the most bytes glibc's malloc "
            f"had handed out (mallinfo2) over the same steps, sampled every 0.2 ms, which counts the tensors and "
            f"not what the allocator keeps for reuse. {brevitas_note}")


def write_page(path: Path, body: str, args: argparse.Namespace, brevitas_note: str, wall_s: float) -> None:
    """Write the table to ``path`` with the command, date, torch version, threads, CPU and wall time."""
    command = shlex.join(["python", "scripts/bench_step.py", *sys.argv[1:]])
    page = (f"# Training-step benchmark: QAT over FP\n\n"
            f"`{command}`\n\n"
            f"{datetime.date.today().isoformat()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"CPU: {cpu_name()}; sweep wall time {wall_s / 60:.1f} min.\n\n"
            f"{setup_line(args, brevitas_note)}\n\n{body}\n")
    path.write_text(page)


def main() -> None:
    """Run the sweep (or, with ``--memory-only``, one memory child) and print the table."""
    args = parse_args()
    compile_kernels(not args.eager and not args.compile_model)
    keep_freed_memory(not args.glibc_malloc)
    recompute_weights(args.recompute_weights)
    if args.memory_only:
        memory_only(args)
        return
    start = time.perf_counter()
    suffixes = ([""] + [NATIVE] * args.native + [FUSED] * args.fuse_batch_norm
                + [FUSED + NATIVE] * (args.native and args.fuse_batch_norm) + list(LEFT_FLOAT) * args.split)
    methods = [f"{m}{suffix}" for m in args.methods for suffix in suffixes]
    if find_spec(BREVITAS) is not None:
        methods.append(BREVITAS)
        brevitas_note = "Brevitas learned-scale W4A4 timed beside ours."
    else:
        brevitas_note = "Brevitas not installed: its comparison was skipped."
    print(brevitas_note, flush=True)
    rows: list[Row] = []
    for model_name in args.models:
        rows += bench_model(model_name, methods, args)
        print(table(rows[-len(methods):], args.bits), flush=True)
    wall_s = time.perf_counter() - start
    body = table(rows, args.bits)
    print(f"\n{setup_line(args, brevitas_note)} {torch.get_num_threads()} threads, wall time {wall_s / 60:.1f} min\n\n{body}")
    if args.out:
        write_page(args.out, body, args, brevitas_note, wall_s)


if __name__ == "__main__":
    main()
