"""The FP baseline: its recipe (the model's own peak learning rate where its config sets one),
and what decides its weights — the CPU thread count and the device type are part of its
identity, and the same command trains the same weights and the same quantized network."""
from __future__ import annotations

from qbench.baseline import fp_recipe
from qbench.identity import baseline_config, config_hash
from qbench.run import run


def test_swish_models_train_their_baseline_at_their_own_learning_rate(make_config):
    for model in ("efficientnet_b0", "mixnet_s"):
        cfg = make_config(f"model={model}")
        assert fp_recipe(cfg)["lr"] == cfg["model"]["fp_lr"] == 0.05
        assert cfg["recipe"]["fp"]["lr"] == 0.1
        other = make_config(f"model={model}", "model.fp_lr=0.02")
        assert config_hash(baseline_config(other, "cpu")) != config_hash(baseline_config(cfg, "cpu"))


def test_models_without_fp_lr_use_the_recipe(make_config):
    for model in ("resnet18", "mobilenet_v2"):
        cfg = make_config(f"model={model}", "recipe.fp.lr=0.07")
        assert "fp_lr" not in cfg["model"]
        assert fp_recipe(cfg) == cfg["recipe"]["fp"]
        assert fp_recipe(cfg)["lr"] == 0.07


def test_the_thread_count_and_the_device_type_are_part_of_the_baseline_identity(make_config):
    cfg = make_config()
    assert cfg["recipe"]["cpu_threads"] == 2
    key = config_hash(baseline_config(cfg, "cpu"))
    assert key != config_hash(baseline_config(make_config("recipe.cpu_threads=1"), "cpu"))
    assert key != config_hash(baseline_config(cfg, "cuda"))


def test_the_same_command_gives_the_same_baseline_weights_and_the_same_quantized_top1(tmp_path):
    from tests.conftest import compose_config

    records = [run(compose_config(["method=lsq", "bits=3"], tmp_path / name)) for name in ("first", "second")]
    assert records[0]["fp"]["weights_sha256"] == records[1]["fp"]["weights_sha256"]
    assert records[0]["fp"]["baseline_key"] == records[1]["fp"]["baseline_key"]
    assert records[0]["metrics"] == records[1]["metrics"]
