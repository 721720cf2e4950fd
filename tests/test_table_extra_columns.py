"""Table specs: a record field as an extra column per precision column; a paper FP per row."""
import pytest

from qbench.report.cli import CONF_TABLES
from qbench.report.table import load_spec, render

SPEC = {
    "name": "demo", "title": "Demo", "paper": "Someone 2018",
    "select": {"method.name": "faq"},
    "columns": {"W8A8": {"wbits": 8, "recipe.name": "r8"}, "W4A4": {"wbits": 4, "recipe.name": "r4"}},
    "extra_columns": {"cos": {"field": "weight_cosine_mean", "digits": 4}},
    "rows": [
        {"label": "ResNet-18", "select": {"model.name": "resnet18"}, "paper_fp": 69.76,
         "paper": {"W8A8": 70.02, "W4A4": 69.82}},
        {"label": "ResNet-50", "paper_fp": 76.15, "paper": {"W8A8": 76.52}},
    ],
}


def record(bits, recipe, top1, cosine, seed=0):
    config = {"model": {"name": "resnet18"}, "method": {"name": "faq"}, "wbits": bits, "abits": bits,
              "recipe": {"name": recipe}, "seed": seed}
    return {"status": "ok", "config": config, "metrics": {"top1": top1, "top5": 99.0}, "fp": {"top1": 90.0},
            "weight_cosine_mean": cosine}


def test_extra_column_shows_the_mean_record_field_per_cell_and_paper_fp_per_row():
    records = [record(4, "r4", 89.0, 0.99, seed=0), record(4, "r4", 88.0, 0.97, seed=1),
               record(8, "r8", 90.5, 0.9999)]
    text, frame = render(SPEC, records)
    assert "| Method | W8A8 ours (Δ FP) | W4A4 ours (Δ FP) | W8A8 paper (Δ FP) | W4A4 paper (Δ FP) | W8A8 cos | W4A4 cos |" in text
    assert "| ResNet-18 | 90.50 (+0.50) | 88.50 ± 0.71 (-1.50) | 70.02 (+0.26) | 69.82 (+0.06) | 0.9999 | 0.9800 |" in text
    assert "| ResNet-50 (paper only) | — | — | 76.52 (+0.37) | — | — | — |" in text
    assert "paper's FP top-1: per row" in text
    w4 = frame[(frame.row == "ResNet-18") & (frame.column == "W4A4")].iloc[0]
    assert w4.weight_cosine_mean == pytest.approx(0.98)


def test_extra_column_reads_dotted_fields_and_skips_records_without_it():
    spec = {**SPEC, "extra_columns": {"top-5": {"field": "metrics.top5"}}}
    text, _ = render(spec, [record(8, "r8", 90.5, None)])
    assert "| ResNet-18 | 90.50 (+0.50) | — | 70.02 (+0.26) | 69.82 (+0.06) | 99.00 | — |" in text
    text, _ = render(SPEC, [record(8, "r8", 90.5, None)])
    assert "| ResNet-18 | 90.50 (+0.50) | — | 70.02 (+0.26) | 69.82 (+0.06) | — | — |" in text


def test_a_list_field_counts_its_items():
    spec = {**SPEC, "extra_columns": {"dead": {"field": "steps_at_floor", "digits": 1}}}
    records = [{**record(4, "r4", 89.0, None, seed=0), "steps_at_floor": ["a", "b", "c"]},
               {**record(4, "r4", 88.0, None, seed=1), "steps_at_floor": []}]
    text, _ = render(spec, records)
    assert "| ResNet-18 | — | 88.50 ± 0.71 (-1.50) | 70.02 (+0.26) | 69.82 (+0.06) | — | 1.5 |" in text


def test_an_extra_value_held_by_some_of_the_cells_runs_says_how_many():
    spec = {**SPEC, "extra_columns": {"int": {"field": "export.integer_top1"}}}
    records = [{**record(4, "r4", 89.0, None, seed=0), "export": {"integer_top1": 88.9}},
               record(4, "r4", 88.0, None, seed=1)]
    text, frame = render(spec, records)
    assert "| ResNet-18 | — | 88.50 ± 0.71 (-1.50) | 70.02 (+0.26) | 69.82 (+0.06) | — | 88.90 (1 of 2 runs) |" in text
    w4 = frame[(frame.row == "ResNet-18") & (frame.column == "W4A4")].iloc[0]
    assert w4["export.integer_top1"] == pytest.approx(88.9)


@pytest.mark.parametrize("name", ["faq_table", "faq_slides"])
def test_faq_specs_render_with_the_cosine_column(name):
    spec = load_spec(name, CONF_TABLES)
    text, frame = render(spec, [])
    assert "W4A4 weight cosine" in text
    assert "| ResNet-34 (paper only) | — | — | 73.71 (+0.41) | 73.31 (+0.01) |" in text
    assert set(frame.row) >= {"ResNet-18", "MobileNetV2", "VGG-16bn"}
