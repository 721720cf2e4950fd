"""The FP baseline's recipe: the model's own peak learning rate where its config sets one."""
from __future__ import annotations

from qbench.baseline import fp_recipe
from qbench.identity import baseline_config, config_hash


def test_swish_models_train_their_baseline_at_their_own_learning_rate(make_config):
    for model in ("efficientnet_b0", "mixnet_s"):
        cfg = make_config(f"model={model}")
        assert fp_recipe(cfg)["lr"] == cfg["model"]["fp_lr"] == 0.05
        assert cfg["recipe"]["fp"]["lr"] == 0.1
        other = make_config(f"model={model}", "model.fp_lr=0.02")
        assert config_hash(baseline_config(other)) != config_hash(baseline_config(cfg))


def test_models_without_fp_lr_use_the_recipe(make_config):
    for model in ("resnet18", "mobilenet_v2"):
        cfg = make_config(f"model={model}", "recipe.fp.lr=0.07")
        assert "fp_lr" not in cfg["model"]
        assert fp_recipe(cfg) == cfg["recipe"]["fp"]
        assert fp_recipe(cfg)["lr"] == 0.07
