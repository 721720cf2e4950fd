"""Every experiment preset builds every cell it sweeps, and every table spec selects cells that
its sweep really makes."""
import shutil
from functools import lru_cache

import pytest
import yaml

from qbench.cli import CONF_DIR, expand_seeds
from qbench.report.records import flatten
from qbench.sweep import check_sweep, sweep_cells
from qbench.validate import ConfigError

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
TABLES = sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml"))


@lru_cache(maxsize=None)
def cells_of(*overrides: str) -> list:
    """The checked cells of a sweep (cached: several tables share one sweep)."""
    return check_sweep(list(overrides), CONF_DIR)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_cell_of_an_experiment_builds_its_method(name):
    cells = cells_of(f"experiment={name}")
    assert len(cells) == len(sweep_cells([f"experiment={name}"], CONF_DIR)) > 1
    assert len({cell.run_id for cell in cells}) == len(cells), "two cells of one sweep share a run id"


def test_a_misspelt_value_in_an_experiment_file_stops_the_sweep(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    path = conf / "experiment" / "lsqplus_table6.yaml"
    path.write_text(path.read_text().replace("learned", "learnd"))
    with pytest.raises(ConfigError, match=r"method.offset='learnd' is not allowed.*\(sweep cell: .*method.offset=learnd"):
        check_sweep(["experiment=lsqplus_table6"], conf)


def sweep_of(spec: dict) -> list[str]:
    """The overrides of the spec's sweep command (``qbench -m ...``), paths left out."""
    words = spec["command"].split()
    assert words[:2] == ["qbench", "-m"], spec["command"]
    return [w for w in expand_seeds(words[2:]) if not w.startswith("paths.") and w != "-m"]


@pytest.mark.parametrize("name", TABLES)
def test_every_cell_of_a_table_matches_a_cell_of_its_sweep(name):
    spec = yaml.safe_load((CONF_DIR / "table" / f"{name}.yaml").read_text())
    configs = [flatten(cell.cfg) for cell in cells_of(*sweep_of(spec))]
    for row in spec["rows"]:
        if row.get("select") is None:
            continue
        for column, column_select in spec["columns"].items():
            want = {**spec.get("select", {}), **row["select"], **column_select}
            missing = sorted(k for k in want if not any(k in c for c in configs))
            assert not missing, f"{name}: select keys {missing} are in no resolved config"
            assert any(all(c.get(k) == v for k, v in want.items()) for c in configs), \
                f"{name}: row {row['label']!r}, column {column} selects no cell of {spec['command']}"
