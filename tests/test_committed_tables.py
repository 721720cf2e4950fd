"""Every committed table under results/tables regenerates byte-identical from qbench's published
records (results/published) with ``qbench-table NAME --published``: a table edited by hand, or
published records changed without re-rendering the tables, fails here; so do results/claims.md
(``qbench-table --claims``), every table's claims judged on the same records, and results/README.md
(``qbench-table --results-page``), every table with its runs, plot and verdicts. Every table has its
picture (``NAME.png``), which regenerates byte-identical under the matplotlib version that drew it."""
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from qbench.report.cli import CONF_TABLES, main
from qbench.report.plot import PNG_METADATA_KEY

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "results" / "tables"
PUBLISHED = REPO / "results" / "published"
# qbench-table puts a --select's value, not its key, in the file name (lsqplus_table2--<value>.md).
# Every committed variant is another recipe, so a file-name suffix is read as recipe.name.
SUFFIX_KEY = "recipe.name"
COMMITTED = sorted(p.name for p in TABLES.glob("*.md")) + sorted(p.name for p in TABLES.glob("*.csv"))
TABLE_STEMS = sorted(p.stem for p in TABLES.glob("*.md"))
CLAIMS_PAGE = REPO / "results" / "claims.md"
RESULTS_PAGE = REPO / "results" / "README.md"


def first_difference(written: Path, committed: Path) -> str:
    """Empty when the two files hold the same bytes, else where they first differ. The tests assert
    on this short text rather than on the bytes: pytest explains a failed ``==`` of two large byte
    strings with a diff whose cost grows with the square of their length (a few PNGs took CI most
    of an hour)."""
    new, old = written.read_bytes(), committed.read_bytes()
    if new == old:
        return ""
    at = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), min(len(new), len(old)))
    line = old[:at].count(b"\n") + 1
    return (f"{len(new)} bytes written, {len(old)} committed, first difference at byte {at} "
            f"(line {line}): written {new[at:at + 60]!r}, committed {old[at:at + 60]!r}")


def table_args(stem: str) -> list[str]:
    """The qbench-table arguments that write ``<stem>.md`` and ``<stem>.csv``: ``NAME--VALUE`` is
    ``NAME --select recipe.name=VALUE``; ``all_runs`` is ``--all``."""
    if stem == "all_runs":
        return ["--all"]
    name, *suffixes = stem.split("--")
    assert len(suffixes) <= 1, f"{stem}: only one --select ({SUFFIX_KEY}) is read from a file name"
    return [name] + [arg for value in suffixes for arg in ("--select", f"{SUFFIX_KEY}={value}")]


def test_every_table_spec_has_a_committed_table():
    specs = {p.stem for p in CONF_TABLES.glob("*.yaml")}
    assert specs and specs <= {Path(name).stem for name in COMMITTED}


@pytest.mark.parametrize("filename", COMMITTED)
def test_committed_table_regenerates_byte_identical(filename, tmp_path):
    argv = [*table_args(Path(filename).stem), "--published", "--published-dir", str(PUBLISHED),
            "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    assert not (diff := first_difference(tmp_path / filename, TABLES / filename)), (
        f"results/tables/{filename} is not what `qbench-table {' '.join(argv[:-4])}` renders from "
        "results/published: re-render it, never edit it by hand; " + diff)


def test_every_committed_table_has_its_picture():
    missing = [f"results/tables/{stem}.png" for stem in TABLE_STEMS if not (TABLES / f"{stem}.png").is_file()]
    assert TABLE_STEMS and not missing, f"no picture beside its table: {', '.join(missing)}"


@pytest.mark.parametrize("stem", TABLE_STEMS)
def test_committed_picture_regenerates_byte_identical(stem, tmp_path):
    with Image.open(TABLES / f"{stem}.png") as committed:
        drawn_by = committed.text.get(PNG_METADATA_KEY)
    if drawn_by != matplotlib.__version__:
        pytest.skip(f"results/tables/{stem}.png was drawn by matplotlib {drawn_by}, this is "
                    f"{matplotlib.__version__}: its pixels may differ")
    argv = [*table_args(stem), "--published", "--published-dir", str(PUBLISHED), "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    assert not (diff := first_difference(tmp_path / f"{stem}.png", TABLES / f"{stem}.png")), (
        f"results/tables/{stem}.png is not what `qbench-table {' '.join(argv[:-4])}` draws from "
        "results/published: re-render it; " + diff)


def test_committed_claims_page_regenerates_byte_identical(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the page names the records folder as given: the default, results/published
    assert main(["--claims", "--out-dir", str(tmp_path)]) == 0
    assert not (diff := first_difference(tmp_path / "claims.md", CLAIMS_PAGE)), (
        "results/claims.md is not what `qbench-table --claims` writes from results/published: "
        "re-render it, never edit it by hand; " + diff)


def test_committed_results_page_regenerates_byte_identical(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the page names the records folder as given and reads results/tables
    assert main(["--results-page", "--out-dir", str(tmp_path)]) == 0
    assert not (diff := first_difference(tmp_path / "README.md", RESULTS_PAGE)), (
        "results/README.md is not what `qbench-table --results-page` writes from results/published: "
        "re-render it, never edit it by hand; " + diff)
