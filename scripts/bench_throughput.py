"""Training throughput of FP against each QAT method per model at 224 px, and data-loading throughput
of an ImageFolder of JPEGs: the numbers behind the GPU-hour estimates of ``dry_run=true`` under
``protocol=paper`` (``qbench/cost.py``, ``results/throughput.yaml``).

    python scripts/bench_throughput.py                                   # resnet18, mobilenet_v2; batch 256
    python scripts/bench_throughput.py --device cuda --out results/throughput.yaml   # on the cluster's GPU
    python scripts/bench_throughput.py --models resnet18 --batch 4 --steps 2 --data-images 48   # a quick look

Training: per model, the FP network and one quantized copy per method (W4A4, edge layers at 8 bits,
quantizers initialised on the batch) take ``--steps`` forward / backward / SGD steps each on one
random batch of ``--batch`` 224 px images, in turn, after ``--warmup`` steps; images/s is batch ×
steps ÷ the time of the timed steps (the device synchronised around them). Evaluation: the FP
network without gradients. Data loading: qbench's ImageNet training pipeline (ImageFolder,
RandomResizedCrop(224), flip, normalise; ``qbench.data.build_data``) over ``--data-images`` JPEGs it
writes into a temporary folder (or ``--data-root``), with ``--workers`` loader processes.
``--out`` writes the measured rows into a throughput table (other models' rows kept); it refuses a
run on the CPU, whose numbers would pass for GPU-measured ones in the GPU-hour estimates. ``--page``
writes the measurement, on any device, as a markdown page with its command.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import qat_methods, quantized  # noqa: E402  (the sibling benchmark's model builder)

from qbench.data import build_data  # noqa: E402
from qbench.models import create_model, model_spec  # noqa: E402
from qbench.quant.kernels import compile_kernels  # noqa: E402
from qbench.validate import fail  # noqa: E402

SIZE = 224
FP = "fp"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--methods", nargs="+", default=qat_methods())
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--eager", action="store_true", help="quantizer kernels not compiled")
    parser.add_argument("--data-images", type=int, default=512, help="JPEGs to write for the loading benchmark")
    parser.add_argument("--data-root", type=Path, help="an existing ImageFolder root (train/) instead")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="write the measured rows into this throughput table (YAML)")
    parser.add_argument("--page", type=Path, help="also write the measurement as a markdown page, with its command")
    return parser.parse_args(argv)


def device_of(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def train_throughput(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, warmup: int,
                     steps: int) -> dict[str, float]:
    """Training images/s of each model: ``warmup`` then ``steps`` SGD steps, the models in turn."""
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    for i in range(warmup + steps):
        for k, m in models.items():
            synchronize(x.device)
            start = time.perf_counter()
            loss = F.cross_entropy(m(x), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            synchronize(x.device)
            if i >= warmup:
                seconds[k] += time.perf_counter() - start
    return {k: len(x) * steps / s for k, s in seconds.items()}


@torch.no_grad()
def eval_throughput(model: nn.Module, x: torch.Tensor, warmup: int, steps: int) -> float:
    """Images/s of ``model`` in eval mode without gradients."""
    model.eval()
    for _ in range(warmup):
        model(x)
    synchronize(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        model(x)
    synchronize(x.device)
    model.train()
    return len(x) * steps / (time.perf_counter() - start)


def significant(value: float) -> float:
    """``value`` to 4 significant digits (a CPU's 0.6 images/s and a GPU's 2,600 alike)."""
    return float(f"{value:.4g}")


def model_row(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One model's row of the throughput table: training images/s of FP and every method, evaluation images/s."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,))
    fp = create_model(name, 1000, 3)
    models = {FP: fp, **{m: quantized(fp, model_spec(name), m, args.bits, x) for m in args.methods}}
    models = {k: m.to(device, memory_format=torch.channels_last).train() for k, m in models.items()}
    x, y = x.to(device), y.to(device)
    train = train_throughput(models, x, y, args.warmup, args.steps)
    return {"source": "measured", "device": device_name(device), "batch": args.batch,
            "train": {k: significant(v) for k, v in train.items()},
            "eval": significant(eval_throughput(models[FP], x, args.warmup, args.steps))}


def write_jpegs(root: Path, count: int, classes: int = 4) -> None:
    """``count`` random 256×320 JPEGs in ``classes`` class folders under ``root/train`` (and an empty ``val``)."""
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (256, 320, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
    (root / "val" / "n00000000").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(root / "val" / "n00000000" / "0.JPEG", quality=90)


def loading_throughput(root: Path, args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of qbench's ImageNet training pipeline over ``root``, one pass after one warm-up pass
    (batches in pinned memory when they are bound for a GPU)."""
    ds = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "dataset" / "imagenet.yaml").read_text())
    ds.update(root=str(root), workers=args.workers, pin_memory=device.type == "cuda")
    data = build_data(ds, min(args.batch, 64), 64, 1, 0, 0)
    for _ in data.train.batches(0):
        pass
    start = time.perf_counter()
    images = sum(len(xb) for xb, _ in data.train.batches(1))
    return images / (time.perf_counter() - start)


def write_table(path: Path, rows: dict[str, dict], loading: dict) -> None:
    """Replace ``rows`` (and the data-loading entry) in the throughput table at ``path``."""
    table = yaml.safe_load(path.read_text()) if path.exists() else {"models": {}}
    table["models"].update(rows)
    table["data_loading"] = loading
    header = "".join(line for line in path.read_text().splitlines(keepends=True)
                     if line.startswith("#")) if path.exists() else ""
    path.write_text(header + yaml.safe_dump(table, sort_keys=False, width=120))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = device_of(args.device)
    if args.out and device.type != "cuda":
        fail(f"--out writes the GPU throughput behind dry_run's GPU-hours; this run is on {device.type}: "
             "measure on a CUDA device, or leave out --out", "bench_throughput.py")
    compile_kernels(not args.eager)
    rows = {}
    for name in args.models:
        rows[name] = model_row(name, args, device)
        row = rows[name]
        ratios = ", ".join(f"{m} {row['train'][m]:g} ({row['train'][FP] / row['train'][m]:.2f}x)" for m in args.methods)
        print(f"{name} on {row['device']}, batch {args.batch}: train images/s FP {row['train'][FP]:g}, {ratios}; "
              f"eval {row['eval']:g}", flush=True)
    with tempfile.TemporaryDirectory(prefix="qbench-jpegs-") as scratch:
        root = args.data_root or Path(scratch)
        if args.data_root is None:
            write_jpegs(root, args.data_images)
        per_s = loading_throughput(root, args, device)
    loading = {"images_per_s": significant(per_s), "workers": args.workers, "host": platform.node(),
               "cpus": os.cpu_count()}
    print(f"data loading (ImageFolder JPEGs, RandomResizedCrop 224): {per_s:.4g} images/s with {args.workers} workers")
    if args.out:
        write_table(args.out, rows, loading)
        print(f"wrote {args.out}")
    if args.page:
        args.page.write_text(page(rows, loading, args))
        print(f"wrote {args.page}")


def page(rows: dict[str, dict], loading: dict, args: argparse.Namespace) -> str:
    """The measurement as markdown: training images/s per model and method (ratio to FP), evaluation, loading."""
    command = shlex.join(["python", "scripts/bench_throughput.py", *sys.argv[1:]])
    device = next(iter(rows.values()))["device"] if rows else "—"
    lines = [
        "# Training throughput at 224 px: FP against each QAT method", "", f"`{command}`", "",
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, {device}; batch {args.batch}, "
        f"W{args.bits}A{args.bits} (edge layers at 8 bits), {args.steps} timed steps after {args.warmup} warm-up "
        f"steps, quantizer kernels {'eager' if args.eager else 'compiled'}. Images/s (FP / method in brackets).",
        "", "| model | FP train | " + " | ".join(args.methods) + " | FP eval |",
        "|---|---:|" + "---:|" * (len(args.methods) + 1),
    ]
    for name, row in rows.items():
        train = row["train"]
        lines.append(f"| {name} | {train[FP]:g} | " + " | ".join(f"{train[m]:g} ({train[FP] / train[m]:.2f}×)"
                                                              for m in args.methods) + f" | {row['eval']:g} |")
    lines += ["", f"Data loading (ImageFolder JPEGs, RandomResizedCrop 224, {loading['workers']} workers, "
                  f"{loading['cpus']} CPUs): {loading['images_per_s']:g} images/s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
