"""Table rendering from records: layout, missing cells, seeds, Δ to FP, ambiguous cells, cells on
another FP baseline of their model; your runs beside qbench's published ones; the qbench-table
command line."""
from pathlib import Path

import pytest
import yaml

from qbench.report.cli import CONF_TABLES, YOUR_RECORDS, main
from qbench.report.records import load_records, records_frame, write_record
from qbench.report.table import Runs, load_spec, narrow_spec, render, render_compared

REPO = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "demo", "title": "Demo", "paper": "Someone 2020", "paper_fp": 70.0,
    "select": {"model.name": "resnet18"},
    "columns": {"W2A2": {"wbits": 2, "abits": 2}, "W4A4": {"wbits": 4, "abits": 4}},
    "rows": [
        {"label": "LSQ", "select": {"method.name": "lsq"}, "paper": {"W2A2": 67.0, "W4A4": 71.0}},
        {"label": "PACT", "paper": {"W2A2": 64.0}},
    ],
}


def record(bits, top1, seed=0, status="ok", method="lsq", fp=90.0, extra=None, weights=None, model="resnet18"):
    """A run record; ``weights`` is its FP baseline's weights hash (none: the FP top-1 identifies it)."""
    config = {"model": {"name": model}, "method": {"name": method}, "wbits": bits, "abits": bits,
              "seed": seed, "quant": {"first_layer": {"quantize": True, "weight_bits": 8, "input_bits": 8},
                                      "last_layer": {"quantize": True, "weight_bits": 8, "input_bits": None}},
              **(extra or {})}
    return {"status": status, "config": config, "metrics": {"top1": top1} if status == "ok" else None,
            "fp": {"top1": fp, **({"weights_sha256": weights, "baseline_key": "k" * 12} if weights else {})}}


def test_cells_means_and_deltas():
    records = [record(4, 89.0, seed=0), record(4, 88.0, seed=1), record(2, 0, status="diverged")]
    text, frame = render(SPEC, records)
    assert "| LSQ | diverged | 88.50 ± 0.71 (-1.50) | 67.00 (-3.00) | 71.00 (+1.00) |" in text
    assert "| PACT (paper only) | — | — | 64.00 (-6.00) | — |" in text
    assert "our FP top-1: 90.00" in text and "first layer: W8/A8" in text and "last layer: W8/input float" in text
    w4 = frame[(frame.row == "LSQ") & (frame.column == "W4A4")].iloc[0]
    assert w4.seeds == 2 and w4.ours_top1 == pytest.approx(88.5) and w4.paper_delta_fp == pytest.approx(1.0)


def test_a_table_that_quotes_no_paper_number_has_no_paper_columns():
    spec = {**SPEC, "rows": [{"label": "LSQ", "select": {"method.name": "lsq"}}]}
    text, _ = render(spec, [record(4, 89.0)])
    assert "| Method | W2A2 ours (Δ FP) | W4A4 ours (Δ FP) |" in text and "| LSQ | — | 89.00 (-1.00) |" in text


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
    launched = seeded(1, 88.0, retries=2, dry_run=True, force=True, runtime={"log_every": 7},
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


MIXED = "FP baselines"
HASH_A, HASH_B = "a" * 64, "b" * 64


def test_a_cell_on_the_less_common_baseline_of_its_model_is_flagged():
    records = [record(2, 60.0, seed=0, fp=90.0, weights=HASH_A), record(2, 61.0, seed=1, fp=90.0, weights=HASH_A),
               record(4, 85.0, fp=88.0, weights=HASH_B)]
    text, frame = render(SPEC, records)
    assert ("In this table our resnet18 runs use 2 FP baselines: `aaaaaaaa` (FP top-1 90.00, 2 runs) in unmarked "
            "cells and `bbbbbbbb` (FP top-1 88.00, 1 run) in cells marked †.") in text
    assert "| LSQ | 60.50 ± 0.71 (-29.50) | 85.00 (-3.00) † |" in text
    assert list(frame.ours_baselines.fillna("")) == ["aaaaaaaa", "bbbbbbbb", "", ""]
    assert list(frame.columns[:2]) == ["row", "column"] and frame.columns[-1] == "ours_baselines"


def test_one_baseline_per_model_flags_nothing():
    records = [record(2, 60.0, weights=HASH_A), record(4, 85.0, seed=0, weights=HASH_A),
               record(4, 86.0, seed=1, weights=HASH_A)]
    text, frame = render(SPEC, records)
    assert MIXED not in text and "†" not in text
    assert "| LSQ | 60.00 (-30.00) | 85.50 ± 0.71 (-4.50) |" in text
    assert list(frame.ours_baselines[:2]) == ["aaaaaaaa", "aaaaaaaa"]


def test_two_models_with_one_baseline_each_flag_nothing():
    spec = {**SPEC, "select": {}, "rows": [{"label": "R18", "select": {"model.name": "resnet18"}},
                                           {"label": "MV2", "select": {"model.name": "mobilenet_v2"}}]}
    records = [record(4, 85.0, fp=90.0, weights=HASH_A), record(4, 80.0, fp=88.0, weights=HASH_B, model="mobilenet_v2")]
    text, frame = render(spec, records)
    assert MIXED not in text and "†" not in text
    assert "our FP top-1: 88.00, 90.00;" in text and "| MV2 | — | 80.00 (-8.00) |" in text
    assert list(frame.ours_baselines.fillna("")) == ["", "aaaaaaaa", "", "bbbbbbbb"]


def test_a_cell_whose_seeds_span_two_baselines_is_flagged():
    records = [record(4, 85.0, seed=0, fp=90.0, weights=HASH_A), record(4, 86.0, seed=1, fp=88.0, weights=HASH_B),
               record(2, 60.0, fp=90.0, weights=HASH_A)]
    text, frame = render(SPEC, records)
    assert "`bbbbbbbb` (FP top-1 88.00, 1 run) in cells marked †." in text
    assert "| LSQ | 60.00 (-30.00) | 85.50 ± 0.71 (-3.50) † |" in text
    assert list(frame.ours_baselines[:2]) == ["aaaaaaaa", "aaaaaaaa,bbbbbbbb"]


def test_records_without_a_hash_are_told_apart_by_their_fp_top1():
    text, frame = render(SPEC, [record(2, 60.0, fp=90.0), record(2, 61.0, seed=1, fp=90.0), record(4, 85.0, fp=88.0)])
    assert "`top1=88.00` (FP top-1 88.00, 1 run) in cells marked †." in text
    assert list(frame.ours_baselines[:2]) == ["top1=90.00", "top1=88.00"]


def test_each_set_of_runs_is_judged_on_its_own_baselines_with_distinct_markers():
    yours = Runs("yours", "your", [record(2, 60.0, fp=90.0, weights=HASH_A), record(2, 61.0, seed=1, weights=HASH_A),
                                   record(4, 85.0, fp=88.0, weights=HASH_B)])
    qbench = Runs("qbench", "qbench's", [record(2, 62.0, fp=88.0, weights=HASH_B),
                                         record(4, 86.0, seed=0, weights=HASH_A),
                                         record(4, 87.0, seed=1, weights=HASH_A)])
    text, _ = render_compared(SPEC, yours, qbench)
    assert "In this table your resnet18 runs use 2 FP baselines" in text
    assert "In this table qbench's resnet18 runs use 2 FP baselines" in text
    assert "| LSQ | 60.50 ± 0.71 (-29.50) | 85.00 (-3.00) † | 62.00 (-26.00) ‡ | 86.50 ± 0.71 (-3.50) |" in text


def test_cli_writes_markdown_and_csv_and_skips_a_corrupt_record(tmp_path, capsys):
    write_record(record(4, 89.0), tmp_path / "rec" / "a.json")
    (tmp_path / "rec" / "broken.json").write_text("{not json")
    (tmp_path / "published").mkdir()
    records, warnings = load_records(tmp_path / "rec")
    assert len(records) == 1 and "broken.json" in warnings[0]
    dirs = ["--records-dir", str(tmp_path / "rec"), "--published-dir", str(tmp_path / "published")]
    assert main(["lsq_resnet18", *dirs, "--out-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "lsq_resnet18.md").read_text().startswith("**LSQ")
    assert (tmp_path / "out" / "lsq_resnet18.csv").exists()
    assert main(["--all", *dirs, "--out-dir", str(tmp_path / "out")]) == 0
    assert len(records_frame(records)) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["no_such_table", *dirs, "--out-dir", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "unknown table 'no_such_table'; allowed: " in capsys.readouterr().err


def test_select_renders_the_same_table_from_another_recipe(tmp_path, capsys):
    spec = {**SPEC, "command": "qbench -m experiment=demo"}
    records = [record(4, 89.0, extra={"recipe": {"name": "a"}}), record(4, 80.0, extra={"recipe": {"name": "b"}})]
    text, _ = render(narrow_spec(spec, {"recipe.name": "b"}), records)
    assert "| LSQ | — | 80.00 (-10.00) |" in text
    assert "beyond the spec" in text and "recipe.name=b" in text
    assert ("`qbench -m experiment=demo recipe=b paths.records_dir=results/published` then "
            "`qbench-table demo --published --select recipe.name=b`") in text
    text, _ = render_compared(narrow_spec(spec, {"recipe.name": "b"}), Runs("yours", "your", records),
                              Runs("qbench", "qbench's", []))
    assert "| LSQ | — | 80.00 (-10.00) | — | — |" in text
    assert "`qbench -m experiment=demo recipe=b` then `qbench-table demo --select recipe.name=b`" in text
    for r in records:
        write_record(r, tmp_path / "rec" / f"{r['config']['recipe']['name']}.json")
    modes = {"yours": ["--records-dir", str(tmp_path / "rec")], "ours": ["--published"]}
    for folder, mode in modes.items():
        out = tmp_path / folder
        args = [*mode, "--published-dir", str(tmp_path / "rec"), "--out-dir", str(out)]
        assert main(["lsq_resnet18", "--select", "recipe.name=b", *args]) == 0
        assert (out / "lsq_resnet18--b.md").exists() and (out / "lsq_resnet18--b.csv").exists()
    with pytest.raises(SystemExit, match="2"):
        main(["lsq_resnet18", "--select", "recipe.name", "--out-dir", str(tmp_path / "o")])
    assert capsys.readouterr().err == ("qbench-table: error: --select 'recipe.name' is not KEY=VALUE "
                                       "(e.g. recipe.name=local_short_bn)\n")


def test_your_runs_show_beside_qbench_published_runs_and_the_paper():
    yours = Runs("yours", "your", [record(4, 85.0, fp=88.0)], "runs/records")
    published = Runs("qbench", "qbench's", [record(4, 89.0, seed=0), record(4, 88.0, seed=1), record(2, 60.0)],
                     "results/published")
    text, frame = render_compared(SPEC, yours, published)
    assert ("| Method | W2A2 yours (Δ FP) | W4A4 yours (Δ FP) | W2A2 qbench (Δ FP) | W4A4 qbench (Δ FP) "
            "| W2A2 paper (Δ FP) | W4A4 paper (Δ FP) |") in text
    assert ("| LSQ | — | 85.00 (-3.00) | 60.00 (-30.00) | 88.50 ± 0.71 (-1.50) | 67.00 (-3.00) | 71.00 (+1.00) |"
            in text)
    assert "| PACT (paper only) | — | — | — | — | 64.00 (-6.00) | — |" in text
    assert "your FP top-1: 88.00; qbench's FP top-1: 90.00; paper's FP top-1: 70.0" in text
    assert "Records read: your runs from `runs/records`, qbench's runs from `results/published`." in text
    w4 = frame[(frame.row == "LSQ") & (frame.column == "W4A4")].iloc[0]
    assert w4.yours_top1 == pytest.approx(85.0) and w4.yours_seeds == 1 and w4.qbench_seeds == 2
    assert w4.qbench_delta_fp == pytest.approx(-1.5)


def test_compared_extra_columns_come_per_set_of_runs():
    spec = {**SPEC, "extra_columns": {"cos": {"field": "weight_cosine_mean", "digits": 3}}}
    mine = {**record(4, 85.0), "weight_cosine_mean": 0.5}
    theirs = {**record(4, 89.0), "weight_cosine_mean": 0.9}
    text, frame = render_compared(spec, Runs("yours", "your", [mine]), Runs("qbench", "qbench's", [theirs]))
    assert "| W2A2 cos yours | W4A4 cos yours | W2A2 cos qbench | W4A4 cos qbench |" in text
    assert "| — | 0.500 | — | 0.900 |" in text
    assert list(frame.columns[-4:]) == ["yours_weight_cosine_mean", "qbench_weight_cosine_mean",
                                        "yours_baselines", "qbench_baselines"]


def test_an_ambiguous_cell_names_the_folder_of_its_runs():
    mixed = [record(4, 89.0, extra={"recipe": {"name": "a"}}), record(4, 88.0, extra={"recipe": {"name": "b"}})]
    with pytest.raises(ValueError, match="your runs in runs/records: cell W4A4 of row 'LSQ' .* differ in recipe.name"):
        render_compared(SPEC, Runs("yours", "your", mixed, "runs/records"), Runs("qbench", "qbench's", []))


def lsq_record(top1, method="lsq"):
    """A record inside conf/table/lsq_resnet18.yaml's select."""
    return record(4, top1, method=method,
                  extra={"dataset": {"name": "fashion_mnist"}, "recipe": {"name": "local", "cpu_threads": 2}})


def test_cli_reads_your_ledger_and_qbench_published_records_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_record(lsq_record(85.0), tmp_path / "runs" / "records" / "mine.json")
    write_record(lsq_record(89.0), tmp_path / "results" / "published" / "theirs.json")
    write_record(lsq_record(80.0, method="fp"), tmp_path / "results" / "published" / "float.json")
    assert main(["lsq_resnet18"]) == 0
    text = (tmp_path / "runs" / "tables" / "lsq_resnet18.md").read_text()
    assert "| LSQ | — | — | 85.00 (-5.00) | — | — | 89.00 (-1.00) |" in text
    assert main(["lsq_resnet18", "--published"]) == 0
    text = (tmp_path / "results" / "tables" / "lsq_resnet18.md").read_text()
    assert "| LSQ | — | — | 89.00 (-1.00) | 67.60 (-2.90) |" in text and "yours" not in text
    assert main(["--all"]) == 0 and main(["--all", "--published"]) == 0
    assert (tmp_path / "runs" / "tables" / "all_runs.csv").read_text().count("\n") == 1 + 1
    assert (tmp_path / "results" / "tables" / "all_runs.csv").read_text().count("\n") == 1 + 2


def test_the_default_records_dir_is_the_ledger_of_conf_config():
    config = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    assert config["paths"]["records_dir"] == YOUR_RECORDS


@pytest.mark.parametrize("argv, message", [
    (["lsq_resnet18", "--published", "--records-dir", "x"], "give --published-dir, not --records-dir"),
    (["lsq_resnet18", "--published-dir", "no/such/dir"], "no published records folder no/such/dir"),
    ([], "give a table name, --all, --claims or --results-page"),
    (["lsq_resnet18", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("qbench-table: error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_TABLES.glob("*.yaml")))
def test_every_table_spec_renders_empty(name):
    spec = load_spec(name, CONF_TABLES)
    assert spec["name"] == name
    text, _ = render(spec, [])
    assert spec["title"] in text
