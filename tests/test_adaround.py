"""AdaRound: the rectified sigmoid and its initialisation, the regulariser and its β schedule,
rounding driven to 0/1, weights on the grid, the link to round-to-nearest, config errors, and
block reconstruction end to end (every model runs it with layer units in tests/test_run.py)."""
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from qbench.methods import create_method
from qbench.quant.adaround import (
    GAMMA,
    ZETA,
    AdaRoundQuantizer,
    AdaRoundRule,
    annealed_beta,
    rectified_sigmoid,
    rounding_regulariser,
)
from qbench.quant.attention_round import AttentionRoundQuantizer
from qbench.quant.grid import integer_range
from qbench.quant.layers import QuantConv2d, QuantLinear
from qbench.quant.reconstruct import Schedule, reconstruct
from qbench.run import run
from tests.test_run import qbench


def test_the_rectified_sigmoid_stays_in_the_unit_interval_and_reaches_both_ends():
    v = torch.linspace(-12, 12, 2001, dtype=torch.float64)
    h = rectified_sigmoid(v)
    assert (ZETA, GAMMA) == (1.1, -0.1)
    assert torch.all((h >= 0) & (h <= 1))
    assert h[0] == 0 and h[-1] == 1
    inside = (h > 0) & (h < 1)
    torch.testing.assert_close(h[inside], torch.sigmoid(v[inside]) * 1.2 - 0.1)


def test_the_initialisation_makes_h_the_fractional_part_and_the_soft_weight_the_float_weight():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.float64)
    q = AdaRoundQuantizer(8)
    q.fit(weight)
    scaled = weight / q.step
    torch.testing.assert_close(q.rounding(), scaled - torch.floor(scaled))
    inside = (scaled >= q.qmin) & (scaled <= q.qmax)
    torch.testing.assert_close(q(weight)[inside], weight[inside])


def test_the_regulariser_and_the_beta_schedule():
    h = torch.tensor([0.0, 1.0, 0.5, 0.25])
    assert rounding_regulariser(h, 2.0).item() == pytest.approx(0 + 0 + 1 + 0.75)
    betas = [annealed_beta(t, 100, 20.0, 2.0, 0.2) for t in range(100)]
    assert betas[:20] == [None] * 20
    assert betas[20] == 20.0 and betas[-1] == 2.0
    steps = [a - b for a, b in itertools.pairwise(betas[20:])]
    assert max(steps) == pytest.approx(min(steps)) and min(steps) > 0
    assert annealed_beta(0, 1, 20.0, 2.0, 0.0) == 2.0


def _toy_layer(bits: int) -> tuple[nn.Module, AdaRoundQuantizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    q = AdaRoundQuantizer(bits)
    q.fit(linear.weight)
    return nn.Sequential(QuantLinear(linear, q, None)), q, list(torch.randn(128, 32).split(32))


def test_the_regulariser_drives_every_h_to_zero_or_one_as_beta_anneals():
    model, q, batches = _toy_layer(3)
    free_model, free, _ = _toy_layer(3)
    log = reconstruct(model, batches, AdaRoundRule(0.1, 20.0, 2.0, 0.2),
                      Schedule("layer", "quantized", iterations=500, batch_size=32, lr=0.05))
    reconstruct(free_model, batches, AdaRoundRule(0.0, 20.0, 2.0, 0.2),
                Schedule("layer", "quantized", iterations=100, batch_size=32, lr=0.05))
    h, h_free = q.rounding().detach(), free.rounding().detach()
    assert torch.all(torch.minimum(h, 1 - h) <= 0.01)
    assert torch.minimum(h_free, 1 - h_free).max() > 0.1  # without the regulariser h stays soft
    assert log["0"]["error_rounded"] < log["0"]["error_nearest"]


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("per_channel", [True, False])
def test_the_final_weights_lie_exactly_on_the_grid(bits, per_channel):
    torch.manual_seed(bits)
    weight = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 2.0, 8).view(-1, 1, 1, 1)
    q = AdaRoundQuantizer(bits, per_channel=per_channel)
    q.fit(weight)
    with torch.no_grad():
        q.v.normal_(0.0, 4.0)
    q.hard = True
    codes = q.codes(weight)
    qmin, qmax = integer_range(bits, signed=True)
    assert torch.equal(codes, torch.round(codes)) and codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(q(weight), codes * q.step)


def test_one_step_without_the_regulariser_is_round_to_nearest_but_where_a_fraction_is_within_lr_of_a_half():
    """At V₀ the hard rounding is round-half-up of w/Δ (h(V₀) is the fractional part r); one
    Adam step moves each V by at most lr, so h by at most lr·max h'(V) = lr·(ζ − γ)/4: only
    weights with |r − ½| within that can round otherwise than round-to-nearest (Attention Round's
    quantizer with δ = 0 on the same grid)."""
    torch.manual_seed(0)
    lr = 0.001
    convs = [nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)]
    layers = [QuantConv2d(conv, AdaRoundQuantizer(3), None) for conv in convs]
    for layer in layers:
        layer.weight_quantizer.fit(layer.weight)
    batches = list(torch.randn(64, 8, 8, 8).split(32))
    reconstruct(nn.Sequential(layers[0], nn.ReLU(), layers[1]), batches, AdaRoundRule(0.0, 20.0, 2.0, 0.2),
                Schedule("layer", "quantized", iterations=1, batch_size=32, lr=lr))
    for layer in layers:
        nearest = AttentionRoundQuantizer(3)
        nearest.fit(layer.weight)
        nearest.hard = True
        q = layer.weight_quantizer
        assert q.hard and torch.equal(q.step, nearest.step)
        scaled = layer.weight.detach() / q.step
        settled = (scaled - torch.floor(scaled) - 0.5).abs() > lr * (ZETA - GAMMA) / 4 + 1e-6
        with torch.no_grad():
            assert torch.equal(q(layer.weight)[settled], nearest(layer.weight)[settled])
        assert settled.float().mean() > 0.99


@pytest.mark.parametrize("field,value,message", [
    ("reg_lambda", -0.01, "method.reg_lambda=-0.01 is not allowed for method adaround; use a number ≥ 0"),
    ("iterations", 0, "method.iterations=0 is not allowed for method adaround; use an integer ≥ 1"),
    ("reconstruction", "net", "method.reconstruction='net' is not allowed for method adaround; use block or layer"),
    ("warmup", 1.0, "method.warmup=1.0 is not allowed"),
    ("beta_end", 30.0, "method.beta_end=30.0 is not allowed"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_method({"name": "adaround", field: value})


def test_a_negative_lambda_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    result = qbench("runtime.device=cpu", "method=adaround", "method.reg_lambda=-1", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["qbench: error: method.reg_lambda=-1 is not allowed for method adaround; use a number ≥ 0"]
    assert not (tmp_path / "records").exists() and not (tmp_path / "runs").exists()


def test_block_reconstruction_end_to_end_writes_a_record(make_config):
    cfg = make_config("method=adaround", "method.reconstruction=block", "method.iterations=3", "wbits=4", "abits=8")
    record = json.loads((Path(cfg["paths"]["records_dir"]) / f"{run(cfg)['run_id']}.json").read_text())
    assert record["status"] == "ok"
    assert record["config"]["method"]["reconstruction"] == "block"
    assert record["weight_bits_per_layer"]["layer1.0.conv1"] == 4
    assert record["calibration_images"] == cfg["calib"]["num_images"]
    assert math.isfinite(record["metrics"]["top1"])
