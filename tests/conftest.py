"""Tests compose the real configs with Hydra and shrink them to a tiny slice of the data."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qbench.cli import CONF_DIR

torch.set_num_threads(2)

TINY = [
    "dataset.train_limit=256", "dataset.val_limit=128",
    "recipe.batch_size=32", "recipe.eval_batch_size=64",
    "recipe.fp.epochs=1", "recipe.qat.epochs=1",
    "recipe.fp.max_steps_per_epoch=2", "recipe.qat.max_steps_per_epoch=2",
    "calib.num_images=32", "runtime.progress=false", "runtime.device=cpu",
    "runtime.compile_quantizers=false",
]


def compose_config(overrides: list[str], tmp_path: Path, tiny: bool = True) -> dict:
    paths = [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.records_dir={tmp_path / 'records'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=(TINY if tiny else []) + paths + overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides: str, tiny: bool = True) -> dict:
        return compose_config(list(overrides), tmp_path, tiny)
    return make


@pytest.fixture
def quantized_network():
    """make(model, method, bits) -> (network, x): the method's W<bits>A<bits> network of ``model``
    (Fashion-MNIST shape, channels_last, edge layers at the default precision), initialised on
    ``x``, a channels_last batch of 8."""
    from qbench.methods import create_method
    from qbench.models import create_model, model_spec
    from qbench.phases import prepare
    from qbench.quant.convert import EdgeLayerPolicy, plan_precision

    def make(model_name: str, method_name: str, bits: int) -> tuple[torch.nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        fp = create_model(model_name, 10, 1)
        spec = model_spec(model_name)
        method = create_method({"name": method_name})
        plan = plan_precision(fp, bits, bits, spec.first_layer, spec.last_layer, EdgeLayerPolicy(), EdgeLayerPolicy())
        model = prepare(fp, method.adjust_plan(fp, plan), method).to(memory_format=torch.channels_last)
        x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        method.initialize(model, [x], train_mode=False)
        return model, x
    return make
