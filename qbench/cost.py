"""Cost before launch: a cell's estimated GPU-hours from a throughput table.

The table (``results/throughput.yaml``, filled by ``scripts/bench_throughput.py``) gives, per
model, training images/s per GPU of FP and of each QAT method, evaluation images/s, and the
minutes a post-training method needs per cell. A cell's GPU time is its fine-tuning (epochs ×
the images each epoch sees ÷ its method's training throughput), its validation passes (one per
epoch for the curves, one at the end) and, for PTQ methods, their reconstruction. Only ImageNet
cells (the paper protocol) are estimated; a model or method the table lacks has no estimate.

    python -m qbench.cost experiment=lsqplus_table2      # every cell under protocol=paper, and the total
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

THROUGHPUT = Path(__file__).resolve().parent.parent / "results" / "throughput.yaml"
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000


@dataclass(frozen=True)
class Estimate:
    """GPU-hours of one cell; ``measured`` when every throughput it used was measured on a GPU."""

    gpu_hours: float
    measured: bool

    def describe(self) -> str:
        return f"~{self.gpu_hours:.1f} GPU-h" + ("" if self.measured else " (estimate: throughput not measured)")


@lru_cache(maxsize=None)
def load_throughput(path: Path = THROUGHPUT) -> dict:
    """The throughput table at ``path`` (parsed once)."""
    return yaml.safe_load(path.read_text())


def images_per_epoch(cfg: dict) -> int:
    """Training images one fine-tuning epoch sees: whole batches of the (limited) training set,
    cut to ``max_steps_per_epoch`` batches where the recipe sets it."""
    recipe = cfg["recipe"]
    batch = recipe["batch_size"]
    steps = (cfg["dataset"].get("train_limit") or IMAGENET_TRAIN_IMAGES) // batch
    if recipe["qat"].get("max_steps_per_epoch"):
        steps = min(steps, recipe["qat"]["max_steps_per_epoch"])
    return steps * batch


def estimate(cfg: dict, table: dict | None = None) -> Estimate | None:
    """The GPU-hours of the cell ``cfg`` (a resolved config), or ``None`` when it is not an
    ImageNet cell or ``table`` (default: :data:`THROUGHPUT`) lacks its model or method."""
    from qbench.methods import METHODS

    table = table if table is not None else load_throughput()
    row = table["models"].get(cfg["model"]["name"])
    method = cfg["method"]["name"]
    if cfg["dataset"]["name"] != "imagenet" or row is None or method not in METHODS:
        return None
    epochs = cfg["recipe"]["qat"]["epochs"]
    val_images = cfg["dataset"].get("val_limit") or IMAGENET_VAL_IMAGES
    seconds = val_images / row["eval"]
    if METHODS[method].trains:
        if method not in row["train"]:
            return None
        seconds += epochs * (images_per_epoch(cfg) / row["train"][method] + val_images / row["eval"])
    elif METHODS[method].quantizes:
        if method not in table.get("ptq_minutes", {}):
            return None
        seconds += 60 * table["ptq_minutes"][method]
    return Estimate(seconds / 3600, row.get("source") == "measured")


def main(argv: list[str] | None = None) -> None:
    """Print every cell of ``qbench -m <overrides> protocol=paper`` with its estimate, then the total;
    a wider run that a cell starts from (APoT's progressive chain) counts once, also when the sweep
    itself does not name it."""
    from qbench.cli import CONF_DIR
    from qbench.identity import run_id
    from qbench.methods import create_method
    from qbench.sweep import compose_cell, sweep_cells, swept, wider_configs

    overrides = list(sys.argv[1:] if argv is None else argv)
    if not any(o.startswith("protocol=") for o in overrides):
        overrides.append("protocol=paper")
    if not any(o.startswith("dataset.root=") for o in overrides):
        overrides.append("dataset.root=/unused")  # the estimate reads no data
    total, measured = 0.0, True
    cells, seen = sweep_cells(overrides, CONF_DIR), set()
    for cell in cells:
        swept_overrides = " ".join(swept(cell, cells))
        target = compose_cell(cell, CONF_DIR)
        target = {**target, "method": create_method(target["method"]).options()}
        for cfg in [*wider_configs(target), target]:
            if run_id(cfg) in seen:
                continue
            seen.add(run_id(cfg))
            est = estimate(cfg)
            label = (f"{cfg['method']['name']} {cfg['model']['name']} W{cfg['wbits']}A{cfg['abits']} "
                     f"{cfg['recipe']['name']}: "
                     + (swept_overrides if cfg is target else f"the wider run that {swept_overrides} starts from"))
            print(f"{est.describe() if est else 'no estimate'}  {label}")
            if est:
                total, measured = total + est.gpu_hours, measured and est.measured
    print(f"total: ~{total:,.0f} GPU-h" + ("" if measured else " (estimate: throughput not measured on a GPU)"))


if __name__ == "__main__":
    main()
