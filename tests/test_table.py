"""Table rendering from records: layout, missing cells, seeds, Δ to FP, ambiguous cells."""
import pytest

from qbench.report.cli import CONF_TABLES, main
from qbench.report.records import load_records, records_frame, write_record
from qbench.report.table import load_spec, narrow_spec, render

SPEC = {
    "name": "demo", "title": "Demo", "paper": "Someone 2020", "paper_fp": 70.0,
    "select": {"model.name": "resnet18"},
    "columns": {"W2A2": {"wbits": 2, "abits": 2}, "W4A4": {"wbits": 4, "abits": 4}},
    "rows": [
        {"label": "LSQ", "select": {"method.name": "lsq"}, "paper": {"W2A2": 67.0, "W4A4": 71.0}},
        {"label": "PACT", "paper": {"W2A2": 64.0}},
    ],
}


def record(bits, top1, seed=0, status="ok", method="lsq", fp=90.0, extra=None):
    config = {"model": {"name": "resnet18"}, "method": {"name": method}, "wbits": bits, "abits": bits,
              "seed": seed, "quant": {"first_layer": {"quantize": True, "weight_bits": 8, "input_bits": 8},
                                      "last_layer": {"quantize": True, "weight_bits": 8, "input_bits": None}},
              **(extra or {})}
    return {"status": status, "config": config, "metrics": {"top1": top1} if status == "ok" else None,
            "fp": {"top1": fp}}


def test_cells_means_and_deltas():
    records = [record(4, 89.0, seed=0), record(4, 88.0, seed=1), record(2, 0, status="diverged")]
    text, frame = render(SPEC, records)
    assert "| LSQ | diverged | 88.50 ± 0.71 (-1.50) | 67.00 (-3.00) | 71.00 (+1.00) |" in text
    assert "| PACT (paper only) | — | — | 64.00 (-6.00) | — |" in text
    assert "our FP top-1: 90.00" in text and "first layer: W8/A8" in text and "last layer: W8/input float" in text
    w4 = frame[(frame.row == "LSQ") & (frame.column == "W4A4")].iloc[0]
    assert w4.seeds == 2 and w4.ours_top1 == pytest.approx(88.5) and w4.paper_delta_fp == pytest.approx(1.0)


def test_the_caption_describes_only_the_runs_in_the_table():
    other = record(4, 80.0, method="faq", fp=95.0)  # inside the spec's select, in no row
    text, _ = render(SPEC, [record(4, 89.0), other])
    assert "our FP top-1: 90.00;" in text


def test_missing_cells_show_a_dash_never_zero():
    text, frame = render(SPEC, [])
    assert "| LSQ | — | — |" in text
    assert frame.ours_top1.isna().all()


def test_halfrange_spread():
    spec = {**SPEC, "spread": "halfrange"}
    text, _ = render(spec, [record(4, 89.0, seed=0), record(4, 85.0, seed=1)])
    assert "87.00 ± 2.00" in text


def test_seeds_group_when_the_calibration_seed_follows_the_seed():
    def seeded(seed, calib_seed, top1):
        return record(4, top1, seed=seed, extra={"calib": {"seed": calib_seed, "num_images": 1024}})
    text, _ = render(SPEC, [seeded(0, 0, 89.0), seeded(1, 1, 88.0)])
    assert "88.50 ± 0.71" in text
    with pytest.raises(ValueError, match="differ in calib.seed"):
        render(SPEC, [seeded(0, 0, 89.0), seeded(1, 7, 88.0)])


def test_seeds_group_whatever_the_settings_outside_the_run_identity():
    def seeded(seed, top1, lr=0.01, **settings):
        extra = {"recipe": {"name": "a", "qat": {"lr": lr}},
                 "dataset": {"name": "fashion_mnist", "root": None, "workers": 2}, **settings}
        return record(4, top1, seed=seed, extra=extra)
    plain = seeded(0, 89.0, retries=0, dry_run=False, force=False)
    launched = seeded(1, 88.0, retries=2, dry_run=True, force=True, runtime={"threads": 1},
                      paths={"records_dir": "elsewhere"},
                      dataset={"name": "fashion_mnist", "root": "/data", "workers": 8})
    text, _ = render(SPEC, [plain, launched])
    assert "| LSQ | — | 88.50 ± 0.71 (-1.50) |" in text
    with pytest.raises(ValueError, match="differ in recipe.qat.lr"):
        render(SPEC, [plain, seeded(1, 88.0, lr=0.02)])


def test_a_cell_mixing_different_runs_is_an_error():
    records = [record(4, 89.0, extra={"recipe": {"name": "a"}}), record(4, 88.0, extra={"recipe": {"name": "b"}})]
    with pytest.raises(ValueError, match="differ in recipe.name"):
        render(SPEC, records)


def test_cli_writes_markdown_and_csv_and_skips_a_corrupt_record(tmp_path, capsys):
    write_record(record(4, 89.0), tmp_path / "rec" / "a.json")
    (tmp_path / "rec" / "broken.json").write_text("{not json")
    records, warnings = load_records(tmp_path / "rec")
    assert len(records) == 1 and "broken.json" in warnings[0]
    assert main(["lsq_resnet18", "--records-dir", str(tmp_path / "rec"), "--out-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "lsq_resnet18.md").read_text().startswith("**LSQ")
    assert (tmp_path / "out" / "lsq_resnet18.csv").exists()
    assert main(["--all", "--records-dir", str(tmp_path / "rec"), "--out-dir", str(tmp_path / "out")]) == 0
    assert len(records_frame(records)) == 1
    assert main(["no_such_table", "--records-dir", str(tmp_path / "rec"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "unknown table 'no_such_table'; allowed: " in capsys.readouterr().err


def test_select_renders_the_same_table_from_another_recipe(tmp_path, capsys):
    spec = {**SPEC, "command": "qbench -m experiment=demo"}
    records = [record(4, 89.0, extra={"recipe": {"name": "a"}}), record(4, 80.0, extra={"recipe": {"name": "b"}})]
    text, _ = render(narrow_spec(spec, {"recipe.name": "b"}), records)
    assert "| LSQ | — | 80.00 (-10.00) |" in text
    assert "beyond the spec" in text and "recipe.name=b" in text
    assert "`qbench -m experiment=demo recipe=b` then `qbench-table demo --select recipe.name=b`" in text
    for r in records:
        write_record(r, tmp_path / "rec" / f"{r['config']['recipe']['name']}.json")
    args = ["--records-dir", str(tmp_path / "rec"), "--out-dir", str(tmp_path / "out")]
    assert main(["lsq_resnet18", "--select", "recipe.name=b", *args]) == 0
    assert (tmp_path / "out" / "lsq_resnet18--b.md").exists() and (tmp_path / "out" / "lsq_resnet18--b.csv").exists()
    with pytest.raises(SystemExit):
        main(["lsq_resnet18", "--select", "recipe.name", *args])
    assert "is not KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_TABLES.glob("*.yaml")))
def test_every_table_spec_renders_empty(name):
    spec = load_spec(name, CONF_TABLES)
    assert spec["name"] == name
    text, _ = render(spec, [])
    assert spec["title"] in text
