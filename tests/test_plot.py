"""The picture beside each table: Δ to FP per column, one line per row with runs, the paper's
numbers as hollow markers, FP as the dashed line at 0; read back from the matplotlib Figure."""
import math

import pytest
from PIL import Image

from qbench.report.cli import main
from qbench.report.plot import PNG_METADATA_KEY, plot_table, write_png
from qbench.report.records import write_record
from qbench.report.table import Runs, render, render_compared
from tests.test_table import SPEC as TABLE_SPEC
from tests.test_table import record

SPEC = {**TABLE_SPEC, "rows": [
    {"label": "LSQ", "select": {"method.name": "lsq"}, "paper": {"W2A2": 67.0, "W4A4": 71.0}},
    {"label": "APoT", "select": {"method.name": "apot"}, "paper": {"W4A4": 69.0}},
    {"label": "PACT", "select": {"method.name": "pact"}, "paper": {"W2A2": 64.0}},
    {"label": "DSQ", "paper": {"W2A2": 65.0}},
]}


RECORDS = [record(4, 89.0, seed=0), record(4, 87.0, seed=1), record(2, 80.0),
           record(4, 85.0, method="apot", fp=88.0), record(2, 0.0, method="pact", status="diverged")]


def lines_by_gid(fig):
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


def test_one_line_per_row_with_runs_beside_the_paper_and_the_fp_line():
    _, frame = render(SPEC, RECORDS)
    lines = lines_by_gid(plot_table(SPEC, frame))
    assert set(lines) == {"fp", "ours|LSQ", "ours|APoT", "paper|LSQ", "paper|APoT"}  # PACT only diverged
    assert list(lines["ours|LSQ"].get_ydata()) == pytest.approx([80.0 - 90.0, 88.0 - 90.0])
    assert lines["ours|APoT"].get_ydata()[1] == pytest.approx(85.0 - 88.0)
    assert math.isnan(lines["ours|APoT"].get_ydata()[0])
    assert list(lines["paper|LSQ"].get_ydata()) == pytest.approx([67.0 - 70.0, 71.0 - 70.0])
    assert lines["paper|LSQ"].get_markerfacecolor() == "none" and lines["paper|LSQ"].get_linestyle() == "None"
    assert lines["ours|LSQ"].get_markerfacecolor() == lines["ours|LSQ"].get_color()
    assert lines["paper|LSQ"].get_color() == lines["ours|LSQ"].get_color() != lines["ours|APoT"].get_color()
    assert lines["fp"].get_linestyle() == "--" and list(lines["fp"].get_ydata()) == [0.0, 0.0]


def test_the_x_axis_says_what_the_columns_are():
    _, frame = render(SPEC, RECORDS)
    assert plot_table(SPEC, frame).axes[0].get_xlabel() == "precision (table column)"
    lengths = {**SPEC, "columns_label": "fine-tuning length (steps)"}
    assert plot_table(lengths, frame).axes[0].get_xlabel() == "fine-tuning length (steps)"


def test_the_spread_over_seeds_is_an_error_bar_and_the_fp_values_are_in_the_legend():
    _, frame = render(SPEC, RECORDS)
    fig = plot_table(SPEC, frame)
    bars = [c for c in fig.axes[0].containers if c.get_label() == "ours spread|LSQ"]
    assert len(bars) == 1
    (segment,) = bars[0].lines[2][0].get_segments()
    assert segment[1][1] - segment[0][1] == pytest.approx(2 * math.sqrt(2))  # ± the std of 89 and 87
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "LSQ — FP: ours 90.00; paper 70.00" in legend and "APoT — FP: ours 88.00; paper 70.00" in legend
    assert any(t.startswith("ours (filled)") and "standard deviation" in t for t in legend)


def test_your_runs_and_qbench_runs_have_different_line_styles():
    _, frame = render_compared(SPEC, Runs("yours", "your", [record(4, 86.0)]), Runs("qbench", "qbench's", RECORDS))
    lines = lines_by_gid(plot_table(SPEC, frame))
    assert {"yours|LSQ", "qbench|LSQ", "qbench|APoT"} <= set(lines) and "yours|APoT" not in lines
    assert lines["yours|LSQ"].get_linestyle() != lines["qbench|LSQ"].get_linestyle()
    assert lines["yours|LSQ"].get_color() == lines["qbench|LSQ"].get_color()


def test_a_table_without_runs_still_has_a_picture():
    _, frame = render(SPEC, [])
    fig = plot_table(SPEC, frame)
    assert set(lines_by_gid(fig)) == {"fp"}
    assert "no finished runs yet" in [t.get_text() for t in fig.axes[0].texts]


def test_the_png_is_the_same_bytes_every_time(tmp_path):
    _, frame = render(SPEC, RECORDS)
    for name in ("a.png", "b.png"):
        write_png(plot_table(SPEC, frame), tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    text = Image.open(tmp_path / "a.png").text
    assert PNG_METADATA_KEY in text and "Software" not in text


def test_cli_writes_the_png_beside_the_table(tmp_path):
    in_lsq_resnet18 = {"dataset": {"name": "fashion_mnist"}, "recipe": {"name": "local", "cpu_threads": 2}}
    write_record(record(4, 89.0, extra=in_lsq_resnet18), tmp_path / "rec" / "a.json")
    dirs = ["--published-dir", str(tmp_path / "rec")]
    modes = {"yours": ["--records-dir", str(tmp_path / "rec")], "ours": ["--published"]}
    for folder, mode in modes.items():
        out = tmp_path / folder
        assert main(["lsq_resnet18", *mode, *dirs, "--out-dir", str(out)]) == 0
        with Image.open(out / "lsq_resnet18.png") as image:
            assert image.format == "PNG" and image.size[0] > 500
