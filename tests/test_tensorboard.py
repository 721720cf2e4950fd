"""What a run writes to TensorBoard, read back with TensorBoard's own event reader."""
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qbench.run import run


def events(cfg: dict, record: dict) -> EventAccumulator:
    acc = EventAccumulator(str(Path(cfg["paths"]["runs_dir"]) / "runs" / record["run_id"] / "tb"))
    acc.Reload()
    return acc


def test_lsq_shows_loss_learning_rate_per_group_and_every_quantizer_over_training(make_config):
    cfg = make_config("method=lsq", "bits=4")
    record = run(cfg)
    acc = events(cfg, record)
    assert {"qat/loss", "qat/lr/network", "qat/lr/quantizers", "val/top1"} <= set(acc.Tags()["scalars"])
    lrs = acc.Scalars("qat/lr/quantizers")[-1].value, acc.Scalars("qat/lr/network")[-1].value
    assert lrs[0] == pytest.approx(lrs[1] * cfg["recipe"]["qat"].get("quantizer_lr_scale", 1.0))
    step = acc.Scalars("quantizer/layer1.0.conv1.input_quantizer.step")
    assert [e.step for e in step] == [0, 2]  # the initial value, then at the last of 2 steps
    assert step[0].value > 0 and step[0].value != step[1].value  # it trains
    assert acc.Scalars("val/top1")[-1].value == pytest.approx(record["metrics"]["top1"])


def test_faq_shows_validation_and_weight_cosine_per_epoch_and_the_hparams(make_config):
    cfg = make_config("method=faq", "recipe=faq_local_4bit", "bits=4", "recipe.qat.epochs=2", "calib.num_images=64")
    record = run(cfg)
    acc = events(cfg, record)
    top1, cosine = acc.Scalars("val/top1"), acc.Scalars("report/method.weight_cosine_mean")
    assert [e.step for e in top1] == [e.step for e in cosine] == [2, 4]  # after each of 2 epochs of 2 steps
    assert top1[-1].value == pytest.approx(record["metrics"]["top1"])
    assert cosine[-1].value == pytest.approx(record["weight_cosine_mean"], abs=1e-6)
    assert "quantizer/conv1.weight_quantizer.step" in acc.Tags()["scalars"]  # a buffer, logged too
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"method.calib_batches" in hparams["_hparams_/session_start_info"]
    assert b"final/top1" in hparams["_hparams_/experiment"]
