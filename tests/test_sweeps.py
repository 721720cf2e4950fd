"""Sweep robustness: dry run, retries and failed records, corrupt records and checkpoints,
self-describing checkpoints, kill -9 and resume, parallel and submitit launchers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qbench.checkpoint import CheckpointError
from qbench.cli import expand_seeds
from qbench.evaluate import rebuild
from qbench.sweep import prepare_cell
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli(*args: str, tmp_path: Path, program: str = "qbench", tiny: bool = True) -> subprocess.CompletedProcess:
    paths = [f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"] if tiny else []
    flags = [a for a in args if a.startswith("-")]  # Hydra reads -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run([str(BIN / program), *flags, *(TINY if tiny else []), *paths, *overrides],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "records").glob("*.json"))]


def test_dry_run_lists_every_state_and_writes_nothing(make_config, tmp_path, capsys):
    from qbench.run import run

    dry = make_config("dry_run=true")
    assert run(dry)["status"] == "dry_run" and not (tmp_path / "runs").exists()
    assert " new " in capsys.readouterr().out
    cell = prepare_cell(make_config())
    cell.checkpoint.parent.mkdir(parents=True)
    cell.checkpoint.write_bytes(b"")
    run(dry)
    assert " partial " in capsys.readouterr().out
    cell.checkpoint.unlink()
    cell.record_path.parent.mkdir(parents=True)
    cell.record_path.write_text(json.dumps({"status": "failed", "config": {}, "error": "OSError: disk"}))
    run(dry)
    out = capsys.readouterr().out
    assert " failed " in out and "(OSError: disk)" in out
    cell.record_path.write_text("{half a rec")
    run(dry)
    assert " corrupt " in capsys.readouterr().out
    record = run(make_config())  # the corrupt record is reported and the cell runs again
    assert record["status"] == "ok" and "is unreadable (JSONDecodeError); running the cell again" in capsys.readouterr().out
    run(dry)
    assert f"{cell.run_id} done " in capsys.readouterr().out


def test_dry_run_of_a_seeds_sweep_through_the_cli_writes_nothing(tmp_path):
    assert expand_seeds(["seeds=3", "bits=2"]) == ["-m", "seed=0,1,2", "bits=2"]
    result = cli("seeds=2", "bits=2,4", "dry_run=true", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "dry run:" in line]
    assert len(lines) == 4 and all(" new " in line for line in lines)
    assert {line.split()[-1] for line in lines} == {"0", "1"}
    assert list(tmp_path.iterdir()) == []


def test_a_crash_is_retried_then_recorded_as_failed(make_config, monkeypatch, capsys):
    import qbench.run

    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        raise OSError("disk on fire\nsecond line")

    monkeypatch.setattr(qbench.run, "run_data", crash)
    record = qbench.run.run(make_config("retries=2"))
    assert len(calls) == 3 and record["status"] == "failed" and record["attempts"] == 3
    assert record["error"] == "OSError: disk on fire"
    saved = json.loads(Path(prepare_cell(make_config()).record_path).read_text())
    assert saved["status"] == "failed" and "Traceback" in Path(saved["error_log"]).read_text()
    out = capsys.readouterr().out
    assert "crashed (attempt 1 of 3): OSError: disk on fire; retrying" in out and "failed: OSError" in out


def test_an_unreadable_checkpoint_is_set_aside_and_the_run_starts_over(make_config, capsys):
    from qbench.run import run

    cell = prepare_cell(make_config())
    cell.checkpoint.parent.mkdir(parents=True)
    cell.checkpoint.write_bytes(b"\x00garbage")
    record = run(make_config())
    assert record["status"] == "ok" and record["resumed_at_epoch"] == 0
    assert "is unreadable (UnpicklingError); set aside as checkpoint.pt.corrupt, starting over" in capsys.readouterr().out
    assert (cell.run_dir / "checkpoint.pt.corrupt").exists()


def test_the_checkpoint_describes_itself_and_rebuilds_the_model(make_config, tmp_path):
    from qbench.run import run

    cfg = make_config("method=lsq", "method.act_signed=auto", "bits=3")  # signedness decided at calibration
    record = run(cfg)
    checkpoint = prepare_cell(cfg).checkpoint
    result = cli(f"checkpoint={checkpoint}", tmp_path=tmp_path, program="qbench-eval", tiny=False)
    assert result.returncode == 0, result.stderr
    assert f"top-1 {record['metrics']['top1']:.2f}" in result.stdout
    model, meta = rebuild(checkpoint)
    assert meta["config"] == record["config"] and meta["versions"]["torch"].startswith("2.14.1")
    assert {name: [p["weight_bits"], p["input_bits"]] for name, p in meta["plan"].items()} == record["layer_precision"]
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="Unexpected key"):
        rebuild(tmp_path / "extra.pt")
    bad = cli(f"checkpoint={tmp_path / 'extra.pt'}", tmp_path=tmp_path, program="qbench-eval", tiny=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not match" in bad.stderr


def test_kill_9_after_the_first_checkpoint_resumes_to_the_same_result(make_config, tmp_path):
    from qbench.run import run

    overrides = ["recipe.qat.epochs=2", "recipe.qat.max_steps_per_epoch=6"]
    killed = tmp_path / "killed"
    cell = prepare_cell(make_config(*overrides, f"paths.runs_dir={killed}/runs",
                                    f"paths.records_dir={killed}/records"))
    paths = [f"paths.runs_dir={killed}/runs", f"paths.records_dir={killed}/records"]
    job = subprocess.Popen([str(BIN / "qbench"), *TINY, *overrides, *paths], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not cell.checkpoint.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not cell.record_path.exists(), "the job finished before it could be killed"
    assert torch.load(cell.checkpoint, weights_only=True)["epoch"] == 1
    resumed = run(make_config(*overrides, *paths))
    assert resumed["resumed_at_epoch"] == 1
    uninterrupted = run(make_config(*overrides))
    assert uninterrupted["resumed_at_epoch"] == 0
    assert resumed["metrics"] == pytest.approx(uninterrupted["metrics"], abs=1e-6)


def test_a_sweep_goes_on_after_a_failed_cell(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA for the crashing cell")
    result = cli("-m", "retries=1", "runtime.device=cuda,cpu", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    statuses = [(r["config"]["runtime"]["device"], r["status"]) for r in records(tmp_path)]
    assert statuses == [("cpu", "ok")], statuses  # one run id (the device is not part of it): rerun
    failed = [line for line in result.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "crashed (attempt 2 of 2)" in result.stdout


def test_joblib_launcher_with_two_workers_then_everything_is_skipped(tmp_path):
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "bits=2,3", "seed=0,1"]
    first = cli(*sweep, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(records(tmp_path)) == 4 and {r["status"] for r in records(tmp_path)} == {"ok"}
    assert len(list((tmp_path / "runs" / "baselines").iterdir())) == 1
    again = cli(*sweep, tmp_path=tmp_path)
    assert again.returncode == 0 and again.stdout.count("is already done") == 4, again.stdout[-2000:]


def test_submitit_local_launcher_completes(tmp_path):
    result = cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "bits=2",
                 tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["status"] for r in records(tmp_path)] == ["ok"]


def test_a_resume_under_other_code_is_reported_in_the_record(make_config, capsys):
    from qbench.run import run

    cfg = make_config()
    first = run(cfg)
    cell = prepare_cell(cfg)
    assert "resumed_from_git" not in first
    state = torch.load(cell.checkpoint, weights_only=True)
    assert state["meta"]["git"] == first["git"]
    state["meta"]["git"] = {"commit": "0" * 40, "dirty": False}
    torch.save(state, cell.checkpoint)
    cell.record_path.unlink()
    resumed = run(cfg)
    assert resumed["resumed_from_git"] == {"commit": "0" * 40, "dirty": False}
    assert f"written by commit {'0' * 40}" in capsys.readouterr().out


def test_two_process_gloo_ddp_run_writes_one_record(tmp_path):
    args = [*TINY, "recipe.qat.epochs=2", "recipe.cpu_threads=1",
            f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"]
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "-m", "qbench", *args],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    records = list((tmp_path / "records").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["effective_batch_size"] == 32
    assert result.stdout.count("[qbench] run ") == 1
    state = torch.load(tmp_path / "runs" / "runs" / record["run_id"] / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
