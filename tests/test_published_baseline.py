"""Published FP baselines (scripts/publish_baseline.py, qbench/baseline.py): a run whose baseline key
is published uses those weights instead of training and says so, gets the published run's FP
top-1 and quantized top-1, refuses a published file that was changed, and trains when
``paths.published_baselines`` is null; a ``model.weights`` file's content, not its name, is part
of the baseline's identity."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from qbench.identity import baseline_config, config_hash, file_sha256
from qbench.models import create_model
from qbench.run import run
from qbench.validate import ConfigError
from tests.conftest import compose_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish_baseline.py"
spec = importlib.util.spec_from_file_location("publish_baseline", SCRIPT)
publish_baseline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(publish_baseline)

# An FP recipe of its own, so that no baseline published in results/baselines has its key.
RECIPE = ["recipe.fp.lr=0.0123"]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[dict, Path, Path]:
    """(the record of a tiny LSQ W3A3 run that trained its baseline, the published folder, its file)."""
    root = tmp_path_factory.mktemp("trained")
    trained = run(compose_config(RECIPE + ["method=lsq", "bits=3", "paths.published_baselines=null"], root))
    directory = next((root / "runs" / "baselines").iterdir())
    target = publish_baseline.publish(directory, root / "published")
    return trained, root / "published", target


def test_publishing_names_the_file_by_model_dataset_and_key(published):
    trained, folder, target = published
    assert target == folder / f"resnet18-fashion_mnist-{trained['fp']['baseline_key']}.pt"
    assert file_sha256(target) == trained["fp"]["weights_sha256"]
    info = json.loads(target.with_suffix(".json").read_text())
    assert info["key"] == trained["fp"]["baseline_key"]
    assert info["metrics"]["top1"] == trained["fp"]["top1"]
    assert info["cpu_kernels"]["capability"]


def test_a_run_of_a_published_key_uses_it_instead_of_training(published, tmp_path):
    trained, folder, target = published
    used = run(compose_config(RECIPE + ["method=lsq", "bits=3", f"paths.published_baselines={folder}"], tmp_path))
    assert used["fp"]["source"] == f"published:{target}"
    assert trained["fp"]["source"] == "trained"
    for field in ("baseline_key", "weights_sha256", "top1"):
        assert used["fp"][field] == trained["fp"][field]
    assert used["metrics"] == trained["metrics"]
    baseline_dir = tmp_path / "runs" / "baselines" / target.stem
    assert not (baseline_dir / "tb").exists()  # nothing was trained: the FP phase logs to tb/


def test_a_changed_published_file_is_refused(published, tmp_path):
    _, folder, target = published
    changed = tmp_path / "published"
    shutil.copytree(folder, changed)
    state = torch.load(changed / target.name, weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, changed / target.name)
    with pytest.raises(ConfigError, match="does not match .* restore it"):
        run(compose_config(RECIPE + ["method=fp", f"paths.published_baselines={changed}"], tmp_path))


def test_publishing_refuses_a_directory_that_is_not_a_finished_baseline(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        publish_baseline.publish(tmp_path, tmp_path / "published")
    assert exit_info.value.code == 2
    assert "is not a finished baseline" in capsys.readouterr().err
    assert not (tmp_path / "published").exists()


def test_a_weights_file_replaced_under_the_same_name_is_a_new_baseline(tmp_path):
    path = tmp_path / "weights.pt"
    keys = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(create_model("resnet18", 10, 1).state_dict(), path)
        keys.append(config_hash(baseline_config(compose_config([f"model.weights={path}"], tmp_path), "cpu")))
    assert keys[0] != keys[1]
