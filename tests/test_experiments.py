"""Every experiment preset composes, and its sweep names only valid cells."""
import pytest
from hydra import compose, initialize_config_dir

from qbench.cli import CONF_DIR
from qbench.validate import validate

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_every_cell_validates(make_config, name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"experiment {name} sweeps nothing"
    keys = list(params)
    cells = [[]]
    for key in keys:
        cells = [c + [f"{key}={v}"] for c in cells for v in str(params[key]).split(",")]
    for cell in cells:
        validate(make_config(f"experiment={name}", *cell))
