"""Cost before launch: GPU-hours of a cell from the throughput table, listed by ``dry_run=true``."""
from __future__ import annotations

import subprocess
import sys

import pytest

from qbench.cost import IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES, estimate, load_throughput

TABLE = {"models": {"resnet18": {"source": "measured", "train": {"fp": 1000, "lsq": 500}, "eval": 5000}},
         "ptq_minutes": {"attention_round": 10}}


def cell(method: str, epochs: int = 2, dataset: str = "imagenet", **recipe) -> dict:
    return {"dataset": {"name": dataset}, "model": {"name": "resnet18"}, "method": {"name": method},
            "recipe": {"batch_size": 256, "qat": {"epochs": epochs, **recipe}}}


def test_a_training_cell_costs_its_epochs_and_validation_passes():
    images = IMAGENET_TRAIN_IMAGES // 256 * 256
    seconds = 2 * (images / 500 + IMAGENET_VAL_IMAGES / 5000) + IMAGENET_VAL_IMAGES / 5000
    est = estimate(cell("lsq"), TABLE)
    assert est.gpu_hours == pytest.approx(seconds / 3600) and est.measured
    short = estimate(cell("lsq", max_steps_per_epoch=10), TABLE)
    assert short.gpu_hours == pytest.approx((2 * (2560 / 500 + 10) + 10) / 3600)


def test_ptq_and_unknown_cells():
    assert estimate(cell("attention_round"), TABLE).gpu_hours == pytest.approx((600 + 10) / 3600)
    assert estimate(cell("apot"), TABLE) is None                      # method not in the table
    assert estimate(cell("lsq", dataset="fashion_mnist"), TABLE) is None  # the proxy is not estimated


def test_the_committed_table_says_its_numbers_are_estimates():
    table = load_throughput()
    assert {row["source"] for row in table["models"].values()} == {"estimate"}
    est = estimate(cell("lsqplus"))
    assert not est.measured and "estimate" in est.describe()


def test_dry_run_of_a_paper_sweep_lists_gpu_hours(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True)
    out = subprocess.run([sys.executable, "-m", "qbench", "-m", "experiment=lsq_resnet18", "protocol=paper",
                          f"dataset.root={tmp_path / 'imagenet'}", "dry_run=true",
                          f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "dry run:" in line]
    assert len(lines) == 3 and all("lsq resnet18 on imagenet" in line and "GPU-h (estimate" in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_the_cost_of_a_sweep_counts_each_wider_run_of_the_apot_chain_once(capsys):
    from qbench.cost import main

    main(["experiment=apot_ablation"])
    lines = capsys.readouterr().out.splitlines()
    cells = [line for line in lines if "apot resnet18" in line]
    wider = [line for line in cells if "the wider run that" in line]
    # per level set: the bits=3 cell and its wider runs W5A5 and W4A4; the bits=4 cell is that W4A4, not counted again
    assert len(cells) == 9 and len(wider) == 6
    assert sum("W5A5" in line for line in wider) == 3 and sum("W4A4" in line for line in wider) == 3
    assert lines[-1].startswith("total: ~") and "not measured on a GPU" in lines[-1]
