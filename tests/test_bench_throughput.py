"""scripts/bench_throughput.py runs on whatever device is present (here the CPU): training images/s
of FP and a QAT method at 224 px, and data loading from an ImageFolder of JPEGs it writes; its
--out, the GPU throughput behind dry_run's GPU-hours, refuses a CPU run."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling bench_step
    try:
        spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPTS / "bench_throughput.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_measures_training_and_loading_throughput_on_the_cpu(bench, capsys, tmp_path):
    bench.main(["--models", "resnet18", "--methods", "lsq", "--batch", "2", "--warmup", "0", "--steps", "1",
                "--eager", "--data-images", "6", "--workers", "0", "--device", "cpu", "--page", str(tmp_path / "t.md")])
    out = capsys.readouterr().out
    assert "resnet18 on " in out and "train images/s FP " in out and ", lsq " in out
    assert "data loading (ImageFolder JPEGs, RandomResizedCrop 224): " in out and "with 0 workers" in out
    page = (tmp_path / "t.md").read_text()
    assert "| model | FP train | lsq | FP eval |" in page and "\n| resnet18 | " in page and "×) | " in page
    assert "0 workers" in page and "batch 2, W4A4" in page


def test_out_refuses_a_cpu_run_before_measuring(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cpu", "--out", str(tmp_path / "throughput.yaml")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "this run is on cpu" in err
    assert not (tmp_path / "throughput.yaml").exists()
