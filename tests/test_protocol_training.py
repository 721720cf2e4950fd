"""The cluster fields of a recipe and a dataset: mixed precision (off unless set), SyncBatchNorm
(CUDA under torchrun), DataLoader settings (not part of a run's identity), and the Slurm preset."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from qbench.cli import CONF_DIR
from qbench.identity import run_id
from qbench.run import run
from qbench.sweep import check_training, prepare_cell


def test_a_bf16_fine_tune_runs_and_is_another_run(make_config):
    plain = make_config("model=resnet18", "bits=4")
    mixed = make_config("model=resnet18", "bits=4", "+recipe.qat.mixed_precision=bf16")
    assert prepare_cell(mixed).run_id != prepare_cell(plain).run_id
    record = run(mixed)
    assert record["status"] == "ok" and record["config"]["recipe"]["qat"]["mixed_precision"] == "bf16"


@pytest.mark.parametrize("field, value, message", [
    ("mixed_precision", "fp8", "recipe.qat.mixed_precision='fp8' is not allowed; use null .float32. or bf16"),
    ("sync_batchnorm", "yes", "recipe.qat.sync_batchnorm='yes' is not allowed; use true or false"),
])
def test_bad_training_fields_are_one_line(field, value, message):
    from qbench.validate import ConfigError

    with pytest.raises(ConfigError, match=message):
        check_training({"qat": {field: value}}, {"fuse_batch_norm": False})


def test_loader_settings_are_not_part_of_the_identity(make_config, tmp_path):
    (tmp_path / "in" / "train").mkdir(parents=True)
    (tmp_path / "in" / "val").mkdir()
    base = ["dataset=imagenet", f"dataset.root={tmp_path / 'in'}"]
    ids = {run_id(make_config(*base, *extra, tiny=False)) for extra in (
        [], ["dataset.workers=2", "dataset.pin_memory=false", "dataset.persistent_workers=true"])}
    assert len(ids) == 1


def test_the_slurm_preset_composes_with_its_fields():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu",
                                                       "hydra.launcher.gpus_per_node=8"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.nodes, launcher.tasks_per_node) == (8, 1, 1)
    assert {"cpus_per_task", "mem_gb", "timeout_min"} <= set(launcher)
