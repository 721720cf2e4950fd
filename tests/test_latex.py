"""The LaTeX table: booktabs rules, balanced braces and environments, the header's column count on
every row, one row per spec row, ``\\pm`` for the spread, escaped labels; the CLI's ``--format latex``."""
import re

import pytest

from qbench.report.cli import CONF_TABLES, main
from qbench.report.latex import escape, render_latex
from qbench.report.records import write_record
from qbench.report.table import Runs, load_spec, render, render_compared

SPEC = {
    "name": "demo_table", "title": "Demo_1: 100% & more", "paper": "Someone 2020", "paper_fp": 70.0,
    "select": {"model.name": "resnet18"},
    "columns": {"W2A2": {"wbits": 2, "abits": 2}, "W4A4": {"wbits": 4, "abits": 4}},
    "extra_columns": {"weight cosine": {"field": "weight_cosine_mean", "digits": 3}},
    "rows": [
        {"label": "Fixed β = x_min & 50%", "select": {"method.name": "lsq"}, "paper": {"W2A2": 67.0, "W4A4": 71.0}},
        {"label": "APoT", "select": {"method.name": "apot"}},
        {"label": "PACT", "paper": {"W2A2": 64.0}},
    ],
}


def record(bits, top1, method="lsq", seed=0, fp=90.0, extra=None):
    config = {"model": {"name": "resnet18"}, "method": {"name": method}, "wbits": bits, "abits": bits, "seed": seed,
              **(extra or {})}
    return {"status": "ok", "config": config, "metrics": {"top1": top1}, "fp": {"top1": fp}, "weight_cosine_mean": 0.5}


RECORDS = [record(4, 89.0, seed=0), record(4, 87.0, seed=1), record(2, 80.0)]


def unescaped(text, char):
    """Positions of ``char`` in ``text`` not preceded by a backslash."""
    return [m.start() for m in re.finditer(rf"(?<!\\){re.escape(char)}", text)]


def assert_balanced(tex):
    depth = 0
    for pos in sorted(unescaped(tex, "{") + unescaped(tex, "}")):
        depth += 1 if tex[pos] == "{" else -1
        assert depth >= 0, f"a }} closes nothing at {pos}"
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} without its \\begin"
    assert not stack


def columns_of(line):
    """The columns a tabular row spans: its cells, a \\multicolumn{n} counting n."""
    cells = [line[a:b] for a, b in zip([0, *(p + 1 for p in unescaped(line, "&"))], [*unescaped(line, "&"), len(line)])]
    return sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)


def tabular_rows(tex):
    """The tabular's column spec count, its header rows and its body rows."""
    spec = re.search(r"\\begin\{tabular\}\{([lc]+)\}", tex).group(1)
    inside = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    header, body = inside.split(r"\midrule")
    rows = [line for line in (header + body).splitlines() if line.rstrip().endswith(r"\\")]
    body_rows = [line for line in body.splitlines() if line.rstrip().endswith(r"\\")]
    return len(spec), rows, body_rows


def test_a_booktabs_table_with_one_row_per_spec_row_and_every_row_as_wide_as_the_header():
    _, frame = render(SPEC, RECORDS)
    tex = render_latex(SPEC, frame)
    assert_balanced(tex)
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    width, rows, body = tabular_rows(tex)
    assert width == 1 + 3 * 2  # Method, then ours, paper and weight cosine over W2A2 and W4A4
    assert [columns_of(row) for row in rows] == [width] * len(rows)
    assert len(body) == len(SPEC["rows"])
    assert body[0].startswith(r"Fixed $\beta$ = x\_min \& 50\% & $80.00$ ($-10.00$) & $88.00 \pm 1.41$ ($-2.00$) "
                              r"& $67.00$ ($-3.00$) & $71.00$ ($+1.00$) & $0.500$ & $0.500$ \\")
    assert body[1].startswith(r"APoT & --- & --- & --- & --- & --- & --- \\")
    assert body[2].startswith(r"PACT (paper only) & --- & --- & $64.00$ ($-6.00$) & --- &")
    assert r"\caption{Demo\_1: 100\% \& more." in tex and "FP top-1: ours 90.00; paper 70.0." in tex
    assert r"\multicolumn{2}{c}{ours ($\Delta$ FP)}" in tex and r"\label{tab:demo_table}" in tex


def test_your_runs_qbench_runs_and_the_paper_are_three_groups():
    yours = Runs("yours", "your", [record(4, 85.0, fp=88.0)])
    _, frame = render_compared(SPEC, yours, Runs("qbench", "qbench's", RECORDS))
    tex = render_latex(SPEC, frame)
    assert_balanced(tex)
    width, rows, body = tabular_rows(tex)
    assert width == 1 + 5 * 2  # yours, qbench, paper, weight cosine yours, weight cosine qbench
    assert [columns_of(row) for row in rows] == [width] * len(rows)
    groups = [r"yours ($\Delta$ FP)", r"qbench ($\Delta$ FP)", r"paper ($\Delta$ FP)", "weight cosine yours",
              "weight cosine qbench"]
    positions = [rows[0].index(rf"\multicolumn{{2}}{{c}}{{{group}}}") for group in groups]
    assert positions == sorted(positions)
    assert body[0].split(" & ")[1:5] == ["---", "$85.00$ ($-3.00$)", "$80.00$ ($-10.00$)",
                                         r"$88.00 \pm 1.41$ ($-2.00$)"]
    assert "FP top-1: yours 88.00; qbench 90.00; paper 70.0." in tex


def test_a_table_that_quotes_no_paper_number_has_no_paper_group():
    spec = {**SPEC, "rows": SPEC["rows"][1:2], "extra_columns": None}
    _, frame = render(spec, RECORDS)
    tex = render_latex(spec, frame)
    width, rows, body = tabular_rows(tex)
    assert width == 1 + 2 and "paper (" not in rows[0] and len(body) == 1


def test_escape_makes_labels_latex():
    assert escape("β_1 & 5% ± 2 · x^2 {a} #1 $ ~ \\") == (
        r"$\beta$\_1 \& 5\% $\pm$ 2 $\cdot$ x\textasciicircum{}2 \{a\} \#1 \$ \textasciitilde{} \textbackslash{}")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_TABLES.glob("*.yaml")))
def test_every_table_spec_is_valid_latex(name):
    spec = load_spec(name, CONF_TABLES)
    _, frame = render(spec, [])
    tex = render_latex(spec, frame)
    assert_balanced(tex)
    width, rows, body = tabular_rows(tex)
    assert [columns_of(row) for row in rows] == [width] * len(rows) and len(body) == len(spec["rows"])


def test_cli_format_latex_writes_the_tex_beside_the_table(tmp_path, capsys):
    in_lsq_resnet18 = {"dataset": {"name": "fashion_mnist"}, "recipe": {"name": "local", "cpu_threads": 2}}
    write_record(record(4, 89.0, extra=in_lsq_resnet18), tmp_path / "rec" / "a.json")
    args = ["--published", "--published-dir", str(tmp_path / "rec")]
    assert main(["lsq_resnet18", *args, "--out-dir", str(tmp_path / "md")]) == 0
    assert not (tmp_path / "md" / "lsq_resnet18.tex").exists()
    assert main(["lsq_resnet18", *args, "--format", "latex", "--out-dir", str(tmp_path / "tex")]) == 0
    assert (tmp_path / "tex" / "lsq_resnet18.md").exists()
    tex = (tmp_path / "tex" / "lsq_resnet18.tex").read_text()
    assert r"LSQ & --- & --- & $89.00$ ($-1.00$) & $67.60$ ($-2.90$)" in tex
    capsys.readouterr()
    for argv in (["--all", "--format", "latex"], ["lsq_resnet18", "--format", "pdf"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, *args, "--out-dir", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("qbench-table: error: ") and err.count("\n") == 1
