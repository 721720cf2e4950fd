"""qbench-export on runs written the way the runner writes them: a finished run is exported into
its record; bad input is one line on stderr, exit code 2, and nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qbench import phases
from qbench.checkpoint import checkpoint_meta, save_atomic, save_training
from qbench.export import cli
from qbench.methods import create_method
from qbench.models import create_model
from qbench.report.records import read_record, write_record
from qbench.report.table import render
from qbench.sweep import Cell, prepare_cell


def finished_run(make_config, *overrides: str) -> Cell:
    """A run's checkpoint (quantizers initialised on a random batch) and its record, as
    :func:`qbench.run.run` leaves them, without training."""
    cell = prepare_cell(make_config("model=resnet18", *overrides))
    cfg = cell.cfg
    method = create_method(cfg["method"])
    model = create_model("resnet18", cfg["dataset"]["num_classes"], cfg["dataset"]["in_chans"]).eval()
    plan = phases.plan_layers(model, cfg, method)
    model = phases.prepare(model, plan, method)
    phases.initialize(model, method, cfg, [torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))])
    cell.run_dir.mkdir(parents=True)
    save_training(cell.checkpoint, model, torch.optim.SGD(model.parameters(), lr=0.1), 1,
                  checkpoint_meta(cfg, cell.run_id, plan))
    write_record({"run_id": cell.run_id, "status": "ok", "config": cfg, "metrics": {"top1": 10.0}},
                 cell.record_path)
    return cell


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def fails(args: list[str], root: Path, capsys) -> str:
    """The one line ``qbench-export args`` prints on stderr; asserts exit code 2 and no file written."""
    before = files(root)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qbench-export: error: ") and "\n" not in err and "Traceback" not in err
    assert files(root) == before
    return err


def test_a_finished_run_gets_an_export_section(make_config, capsys):
    cell = finished_run(make_config, "method=lsq", "bits=4")
    cli.main([f"run={cell.run_id}", f"records_dir={cell.record_path.parent}", "backend=false", "dataset.val_limit=16"])
    export = read_record(cell.record_path)["export"]
    parity = export["parity"]
    assert parity["images"] == 16 and export["integer_top1"] == parity["integer_top1"]
    assert {"simulated_top1", "integer_agreement", "integer_max_logit_diff"} <= set(parity)
    assert export["backend"]["error"] == "skipped (backend=false)"
    assert export["size"]["compression"] > 6 and export["size"]["weight_bits"] == [4, 8]
    assert f"run {cell.run_id}: simulated" in capsys.readouterr().out


def test_apot_has_no_affine_form(make_config, tmp_path, capsys):
    cell = finished_run(make_config, "method=apot", "bits=4")
    err = fails([f"checkpoint={cell.checkpoint}"], tmp_path, capsys)
    assert "(method apot) has no integer form: APoTQuantizer" in err and "without an affine form" in err


def test_bad_runs_and_checkpoints(make_config, tmp_path, capsys):
    cell = finished_run(make_config, "method=lsq", "bits=4")
    records = f"records_dir={cell.record_path.parent}"
    assert "has no record" in fails(["run=0123456789ab", records], tmp_path, capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "is unreadable" in fails([f"checkpoint={garbage}"], tmp_path, capsys)
    foreign = tmp_path / "foreign.pt"
    save_atomic({"model": {}}, foreign)
    assert "not a qbench run checkpoint" in fails([f"checkpoint={foreign}"], tmp_path, capsys)
    assert "is not a file" in fails([f"checkpoint={tmp_path / 'absent.pt'}"], tmp_path, capsys)
    assert "is not allowed" in fails([f"run={cell.run_id}", "bogus=1"], tmp_path, capsys)
    cell.checkpoint.rename(tmp_path / "moved.pt")
    assert "has no checkpoint" in fails([f"run={cell.run_id}", records], tmp_path, capsys)
    (tmp_path / "moved.pt").rename(cell.checkpoint)
    write_record({**read_record(cell.record_path), "status": "failed"}, cell.record_path)
    assert "is not finished" in fails([f"checkpoint={cell.checkpoint}"], tmp_path, capsys)
    cell.record_path.unlink()
    assert "has no record" in fails([f"checkpoint={cell.checkpoint}"], tmp_path, capsys)


def test_float_method_has_nothing_to_export(make_config, tmp_path, capsys):
    fp = prepare_cell(make_config("method=fp"))
    write_record({"run_id": fp.run_id, "status": "ok", "config": fp.cfg, "metrics": {"top1": 90.0}}, fp.record_path)
    assert "nothing is quantized" in fails([f"run={fp.run_id}", f"records_dir={fp.record_path.parent}"],
                                           tmp_path, capsys)


def test_a_table_shows_integer_top1_beside_the_simulated_one():
    spec = {"name": "demo", "title": "Demo", "paper": "none", "select": {"method.name": "lsq"},
            "columns": {"W4A4": {"wbits": 4}}, "extra_columns": {"integer": {"field": "export.integer_top1"}},
            "rows": [{"label": "ResNet-18", "select": {"model.name": "resnet18"}}]}
    config = {"model": {"name": "resnet18"}, "method": {"name": "lsq"}, "wbits": 4, "abits": 4, "seed": 0}
    record = {"status": "ok", "config": config, "metrics": {"top1": 89.5}, "fp": {"top1": 90.0},
              "export": {"integer_top1": 89.47}}
    text, _ = render(spec, [record])
    assert "| W4A4 ours (Δ FP) | W4A4 integer |" in text and "| ResNet-18 | 89.50 (-0.50) | 89.47 |" in text
