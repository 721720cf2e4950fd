"""``results/README.md`` (``qbench-table --results-page``): every table spec and committed recipe
variant with the recipe, commits and dates of its runs, its commands, its plot, a link to its table
and one line per claim with its verdict, the verdict counts at the top and the command at the bottom."""
from pathlib import Path

import pytest
import yaml

from qbench.report.cli import CONF_TABLES, main
from qbench.report.records import write_record
from qbench.report.results_page import results_page
from qbench.report.table import load_spec
from tests.test_claims import SPEC, TIGHT_HIGH, TIGHT_LOW, WIDE
from tests.test_table import record

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "results" / "tables"
CLAIMS = [
    {"id": "two_beats_one", "text": "t", "source": "s", "check": 'W4A4 "Config 2" > W4A4 "Config 1"'},
    {"id": "one_beats_two", "text": "t", "source": "s", "check": 'W4A4 "Config 1" >= W4A4 "Config 2"'},
    {"id": "three_beats_one", "text": "t", "source": "s", "check": 'W2A2, W4A4: "Config 3" > "Config 1"'},
]
DEMO = {**SPEC, "select": {"model.name": "resnet18", "recipe.name": "local"},
        "dataset_label": "Fashion-MNIST (demo recipe)", "command": "qbench -m experiment=demo", "claims": CLAIMS}


def runs(bits, method, values, recipe="local", commit="a" * 40, dirty=False, day="2026-11-22", status="ok"):
    """One record per seed of one cell, with the recipe, git state and creation time a run writes."""
    made = [record(bits, v, seed=i, method=method, status=status, extra={"recipe": {"name": recipe}})
            for i, v in enumerate(values)]
    for r in made:
        r.update(git={"commit": commit, "dirty": dirty}, created=f"{day}T10:00:00+0000")
    return made


def demo_dirs(tmp_path: Path, variants: tuple[str, ...] = (), plots: tuple[str, ...] = (),
              spec: dict = DEMO) -> tuple[Path, Path]:
    """A table-spec folder holding ``spec`` and a tables folder with the given committed variants
    (``demo--VALUE.md``) and plots (``STEM.png``)."""
    specs, tables = tmp_path / "specs", tmp_path / "tables"
    specs.mkdir()
    tables.mkdir()
    (specs / "demo.yaml").write_text(yaml.safe_dump(spec))
    for value in variants:
        (tables / f"demo--{value}.md").write_text("a committed variant\n")
    for stem in plots:
        (tables / f"{stem}.png").write_bytes(b"png")
    return specs, tables


def test_each_claim_is_one_line_with_its_verdict_and_reason_and_the_top_counts_them(tmp_path):
    records = (runs(4, "better", TIGHT_HIGH) + runs(4, "plain", TIGHT_LOW) + runs(4, "best", WIDE)
               + runs(2, "best", [70.0]) + runs(2, "plain", [60.0, 61.0]))
    page = results_page(*demo_dirs(tmp_path), records, "results/published")
    assert "- **two_beats_one** — holds — 1 comparison: holds 1, fails 0, inconclusive 0\n" in page
    assert ('- **one_beats_two** — fails — 1 comparison: holds 0, fails 1, inconclusive 0; first failing, '
            '`W4A4 "Config 1" >= W4A4 "Config 2"`: left − right -5.00, 95% CI [') in page
    assert ('- **three_beats_one** — inconclusive — 2 comparisons: holds 1, fails 0, inconclusive 1; first '
            'inconclusive, `W2A2 "Config 3" > W2A2 "Config 1"`: W2A2 "Config 3" has 1 seed (a test needs 2)\n') in page
    assert ("**Summary**: the 1 table, 3 claims: holds 1, fails 1, inconclusive 1; "
            "their 0 recipe variants, 0 claims: holds 0, fails 0, inconclusive 0.") in page
    assert "[claims.md](claims.md)" in page and f"({len(records)} runs)" in page
    assert page.endswith("\nMade by: `qbench-table --results-page`.\n")


def test_each_table_says_its_data_recipes_commands_commits_and_dates(tmp_path):
    records = (runs(4, "better", TIGHT_HIGH, commit="1234567" + "0" * 33, day="2026-11-20")
               + runs(4, "plain", TIGHT_LOW, recipe="short", commit="abcdef0" + "0" * 33, dirty=True, day="2026-11-23")
               + runs(2, "plain", [0.0], commit="abcdef0" + "0" * 33, day="2026-11-21", status="diverged"))
    any_recipe = {**DEMO, "select": SPEC["select"]}
    page = results_page(*demo_dirs(tmp_path, spec=any_recipe), records, "results/published")
    assert "\n## demo\n\n**Demo** — [full table](tables/demo.md)\n" in page
    assert "- Data: Fashion-MNIST (demo recipe)\n- Recipe of the runs shown: `local`, `short`\n" in page
    assert ("- Runs: 7 (6 finished, 1 diverged), created 2026-11-20 to 2026-11-23; git commits "
            "`1234567` (3 runs), `abcdef0` (4 runs, 3 from a dirty tree)\n") in page
    assert ("- Made by: `qbench -m experiment=demo paths.records_dir=results/published` then "
            "`qbench-table demo --published`\n") in page


def test_each_table_sums_its_runs_wall_time_per_device(tmp_path):
    records = runs(4, "better", TIGHT_HIGH) + runs(4, "plain", TIGHT_LOW)
    for r, (seconds, device) in zip(records, [(3600, "cpu"), (1800, "cpu"), (720, "cuda"), (None, "cpu")]):
        r.update(wall_time_s=seconds, device=device)
    page = results_page(*demo_dirs(tmp_path), records, "results/published")
    assert "- Wall time of the runs: 1.5 h on cpu, 12 min on cuda (a run that trained its FP baseline" in page


def test_a_table_without_runs_says_so(tmp_path):
    page = results_page(*demo_dirs(tmp_path), [], "elsewhere")
    assert "- Recipe of the runs shown: —\n- Runs: 0, created —; git commits —\n- Wall time of the runs: —" in page
    assert page.endswith("\nMade by: `qbench-table --results-page --published-dir elsewhere`.\n")


def test_a_committed_recipe_variant_is_a_sub_entry_judged_on_its_own_runs(tmp_path):
    records = runs(4, "better", TIGHT_HIGH, recipe="other") + runs(4, "plain", TIGHT_LOW, recipe="other")
    page = results_page(*demo_dirs(tmp_path, variants=("other",), plots=("demo--other",)), records, "x")
    assert "- [demo](#demo) — Demo: 3 claims: holds 0, fails 0, inconclusive 3\n" in page
    assert "  - [demo--other](#demo--other) — Demo, recipe.name=other: 3 claims: holds 1, fails 1" in page
    variant = page[page.index("\n### demo--other\n"):]
    assert "[full table](tables/demo--other.md)" in variant
    assert "- Runs selected beyond the spec: recipe.name=other" in variant
    assert ("`qbench -m experiment=demo recipe=other paths.records_dir=results/published` then "
            "`qbench-table demo --published --select recipe.name=other`") in variant
    assert "- **two_beats_one** — holds — " in variant and "- Runs: 6, created 2026-11-22" in variant
    assert "their 1 recipe variant, 3 claims: holds 1, fails 1, inconclusive 1." in page


def test_a_plot_is_embedded_where_it_exists_and_said_missing_where_not(tmp_path):
    page = results_page(*demo_dirs(tmp_path, variants=("other",), plots=("demo",)), [], "x")
    assert "\n![demo: each number's Δ top-1 to its own FP per column, ours and the paper's](tables/demo.png)\n" in page
    assert "](tables/demo--other.png)" not in page and "No plot committed (`tables/demo--other.png`)." in page


def test_the_page_lists_every_table_spec_and_variant_and_embeds_each_plot_that_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the committed tables and plots are read from results/tables
    published = tmp_path / "published"
    for r in runs(4, "lsq", [91.0, 91.2]):
        write_record(r, published / f"{r['config']['seed']}.json")
    assert main(["--results-page", "--published-dir", str(published), "--out-dir", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "README.md").read_text()
    names = sorted(p.stem for p in CONF_TABLES.glob("*.yaml"))
    stems = names + sorted(p.stem for p in TABLES.glob("*--*.md"))
    for name in names:
        spec = load_spec(name, CONF_TABLES)
        assert f"\n## {name}\n\n**{spec['title']}** — [full table](tables/{name}.md)\n" in page
        assert all(f"- **{claim['id']}** — " in page for claim in spec.get("claims", []))
    for stem in stems:
        assert f"[{stem}](#{stem})" in page and f"[full table](tables/{stem}.md)" in page
        if (TABLES / f"{stem}.png").is_file():
            assert f"](tables/{stem}.png)\n" in page, f"results/tables/{stem}.png is not embedded"
    assert page.count("\n![") == sum((TABLES / f"{stem}.png").is_file() for stem in stems) > 0


def test_the_results_page_needs_the_committed_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "published").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["--results-page", "--published-dir", "published"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("qbench-table: error: --results-page reads the committed tables in results/tables")


def exported(bits, method_config, parity, compression=4.0, run_id="r1"):
    """A record with the export section qbench-export writes (``parity`` as it measures it)."""
    made = runs(bits, "lsqplus", [90.0])[0]
    made["config"]["method"] = {"name": "lsqplus", **method_config}
    made.update(run_id=run_id, export={"parity": parity, "size": {"compression": compression},
                                       "backend": {"name": "pt2e"}})
    return made


def test_exported_runs_get_one_parity_row_each_and_a_failed_backend_says_why(tmp_path):
    full = {"images": 2000, "simulated_top1": 86.1, "integer_top1": 86.15, "integer_agreement": 99.95,
            "integer_max_logit_diff": 14.7, "int8_top1": 86.05, "int8_agreement": 99.9, "int8_max_logit_diff": 15.2}
    no_int8 = {k: v for k, v in full.items() if not k.startswith("int8")}
    records = [exported(4, {"config": 4}, full, 7.3), exported(8, {}, no_int8, 4.0, "r2"), *runs(4, "lsq", [91.0])]
    records[1]["export"]["backend"]["error"] = "skipped (backend=false)"
    page = results_page(*demo_dirs(tmp_path), records, "x")
    section = page[page.index("\n## Integer deployment\n"):]
    assert "2 published runs exported by `qbench-export" in section
    assert ("| r1 | resnet18 | lsqplus config 4 | W4A4 | 2000 | 86.10 | 86.15 (99.95%, 14.7) | 86.05 (99.90%, 15.2) "
            "| 7.3× |") in section
    assert "| r2 | resnet18 | lsqplus | W8A8 | 2000 | 86.10 | 86.15 (99.95%, 14.7) | — (skipped (backend=false)) | 4.0× |" in section
    assert section.index("| r2 |") < section.index("| r1 |")  # by model, then method
    (tmp_path / "none").mkdir()
    assert "## Integer deployment" not in results_page(*demo_dirs(tmp_path / "none"), records[2:], "x")
