"""Attention Round: the rounding distribution against its formula, hard quantization on the grid,
coding-length bit allocation, the calibration count, and both PTQ methods end to end."""
import json
import math
from pathlib import Path

import pytest
import torch

from qbench.methods import create_method
from qbench.models import create_model
from qbench.phases import prepare
from qbench.quant.attention_round import (
    AttentionRoundQuantizer,
    annealed_sigma,
    attention_probabilities,
    attention_round,
)
from qbench.quant.calibrate import weight_quantizers
from qbench.quant.convert import EdgeLayerPolicy, plan_precision
from qbench.quant.grid import integer_range
from qbench.quant.mixed_precision import allocate_bits, bits_per_weight, coding_length
from qbench.run import run


def test_probabilities_are_normalised_peak_at_the_nearest_level_and_are_gaussian():
    qmin, qmax = integer_range(4, signed=True)
    u = torch.linspace(qmin - 1.3, qmax + 1.7, 203, dtype=torch.float64)
    sigma = 0.8
    levels, probs = attention_probabilities(u, sigma, qmin, qmax)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(u))
    nearest = torch.clamp(torch.round(u), qmin, qmax)
    assert torch.equal(levels[probs.argmax(-1)], nearest)
    # P_k / P_j = exp(−((u − k)² − (u − j)²)/(2σ²)) for every pair of levels, element by element.
    for i in range(0, len(u), 17):
        x = u[i].item()
        for k in range(len(levels)):
            for j in (0, len(levels) - 1):
                expected = math.exp(-((x - levels[k].item()) ** 2 - (x - levels[j].item()) ** 2) / (2 * sigma**2))
                assert probs[i, k].item() / probs[i, j].item() == pytest.approx(expected, rel=1e-9)


def test_the_window_keeps_the_nearest_levels_and_their_probabilities():
    qmin, qmax = integer_range(4, signed=True)
    u = torch.linspace(qmin - 0.4, qmax + 0.4, 97, dtype=torch.float64)
    full_levels, full = attention_probabilities(u, 0.5, qmin, qmax)
    levels, probs = attention_probabilities(u, 0.5, qmin, qmax, window=3)
    assert levels.shape == u.shape + (6,)
    inside = (levels >= qmin) & (levels <= qmax)
    assert torch.all(probs[~inside] == 0)
    gathered = full.gather(-1, (levels.clamp(qmin, qmax) - qmin).long())
    torch.testing.assert_close(torch.where(inside, probs, 0.0), torch.where(inside, gathered, 0.0), atol=5e-4, rtol=0)


def test_annealing_narrows_the_attention_to_the_nearest_level():
    assert annealed_sigma(0, 100, 0.5, 0.05) == pytest.approx(0.5)
    assert annealed_sigma(99, 100, 0.5, 0.05) == pytest.approx(0.05)
    widths = [annealed_sigma(t, 100, 0.5, 0.05) for t in range(100)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    ratios = [b / a for a, b in zip(widths, widths[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # geometric
    u = torch.tensor([0.3, 1.45, -2.2], dtype=torch.float64)
    peaks = [attention_probabilities(u, s, -8, 7)[1].max(-1).values for s in (widths[0], widths[50], widths[-1])]
    assert torch.all(peaks[0] < peaks[1]) and torch.all(peaks[1] < peaks[2])
    assert torch.all(peaks[2] > 0.99)
    torch.testing.assert_close(_soft(u, widths[-1], -8, 7), torch.round(u), atol=1e-3, rtol=0)


def _soft(u, sigma, qmin, qmax, window=None, sample=False):
    one = torch.ones((), dtype=u.dtype)
    return attention_round(u, one, torch.zeros_like(u), sigma, qmin, qmax, window, sample)


@pytest.mark.parametrize("window", [None, 3])
def test_soft_weight_is_the_expected_level_with_its_exact_gradient(window):
    torch.manual_seed(0)
    v = torch.linspace(-9.3, 8.6, 151, dtype=torch.float64)
    step = torch.tensor(0.37, dtype=torch.float64)
    offset = (0.4 * torch.randn_like(v)).requires_grad_(True)
    sigma = 0.6
    levels, probs = attention_probabilities(v / step + offset, sigma, -8, 7, window)
    reference = step * (probs * levels).sum(-1)
    upstream = torch.randn_like(reference)
    (expected_grad,) = torch.autograd.grad(reference, offset, upstream)
    out = attention_round(v, step, offset, sigma, -8, 7, window)
    torch.testing.assert_close(out, reference.detach())
    out.backward(upstream)
    torch.testing.assert_close(offset.grad, expected_grad)


def test_sampled_levels_follow_the_probabilities():
    torch.manual_seed(0)
    u = torch.full((200_000,), 0.3, dtype=torch.float64)
    levels, probs = attention_probabilities(u[:1], 0.7, -2, 1)
    samples = _soft(u, 0.7, -2, 1, sample=True)
    freq = torch.stack([(samples == lv).double().mean() for lv in levels])
    torch.testing.assert_close(freq, probs[0], atol=5e-3, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_hard_quantization_lands_exactly_on_the_grid(bits, per_channel):
    torch.manual_seed(bits)
    weight = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 2.0, 8).view(-1, 1, 1, 1)
    q = AttentionRoundQuantizer(bits, per_channel=per_channel)
    q.fit(weight)
    with torch.no_grad():
        q.offset.normal_(0.0, 2.0)  # pushes some weights several levels away, some off the grid's ends
    q.hard = True
    out = q(weight)
    qmin, qmax = integer_range(bits, signed=True)
    steps = q.step.expand_as(weight)
    grid = torch.arange(qmin, qmax + 1, dtype=weight.dtype)
    per_element = grid.view(-1, 1, 1, 1, 1) * steps.unsqueeze(0)
    assert torch.all((out.unsqueeze(0) == per_element).any(0))
    assert q.step.shape == ((8, 1, 1, 1) if per_channel else ())


def test_coding_length_matches_the_formula_and_ignores_scale():
    torch.manual_seed(0)
    w = torch.randn(6, 5, dtype=torch.float64)  # 6 output vectors (m) of dimension 5 (n)
    d = 0.2
    W = w.T
    n, m = W.shape
    eps2 = n * (d * W.square().mean().sqrt()) ** 2
    expected = (m + n) / 2 * torch.logdet(torch.eye(n, dtype=torch.float64) + n / (eps2 * m) * W @ W.T) / math.log(2)
    assert coding_length(w, d) == pytest.approx(expected.item(), rel=1e-9)
    assert coding_length(7.5 * w, d) == pytest.approx(expected.item(), rel=1e-9)
    low_rank = torch.randn(6, 1, dtype=torch.float64) @ torch.randn(1, 5, dtype=torch.float64)
    assert bits_per_weight(low_rank, d) < bits_per_weight(w, d)


@pytest.mark.parametrize("budget", [2, 3, 4, 6])
def test_bit_allocation_respects_the_budget_and_follows_coding_length(budget):
    torch.manual_seed(budget)
    names = [f"layer{i}" for i in range(12)]
    lengths = dict(zip(names, (torch.rand(12) * 4 + 1).tolist()))
    sizes = dict(zip(names, torch.randint(100, 10_000, (12,)).tolist()))
    bits = allocate_bits(lengths, sizes, budget, 2, 8)
    average = sum(bits[k] * sizes[k] for k in names) / sum(sizes.values())
    assert average <= budget + 1e-9
    assert all(2 <= b <= 8 for b in bits.values())
    by_length = sorted(names, key=lengths.get)
    assert all(bits[a] <= bits[b] for a, b in zip(by_length, by_length[1:]))
    if budget > 2:
        assert bits[by_length[-1]] > bits[by_length[0]]
        assert average > budget - 1


def test_bit_allocation_refuses_a_budget_below_the_minimum():
    with pytest.raises(ValueError, match="below the minimum"):
        allocate_bits({"a": 1.0}, {"a": 10}, 2, 3, 8)


@pytest.mark.parametrize("field,value,message", [
    ("relaxation", "gumbel", "method.relaxation='gumbel' is not allowed for method attention_round; use expected or sample"),
    ("reconstruction", "net", "method.reconstruction='net' is not allowed for method attention_round; use block or layer"),
    ("epochs", "6", "method.epochs='6' is not allowed for method attention_round; use a number > 0"),
    ("window", 0, "method.window=0 is not allowed"),
    ("sigma_end", 0.9, "method.sigma_end=0.9 is not allowed"),
    ("mp_min_bits", 1, "method.mp_min_bits=1"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_method({"name": "attention_round", field: value})


def _saved(cfg, record):
    return json.loads((Path(cfg["paths"]["records_dir"]) / f"{record['run_id']}.json").read_text())


def test_calibration_uses_exactly_the_configured_images(make_config):
    cfg = make_config("method=ptq_nearest", "calib.num_images=40")
    record = _saved(cfg, run(cfg))
    assert record["status"] == "ok"
    assert record["calibration_images"] == 40


@pytest.mark.parametrize("method", ["ptq_nearest", "attention_round"])
def test_end_to_end_writes_a_record(make_config, method):
    extra = ["method.epochs=2"] if method == "attention_round" else []
    cfg = make_config(f"method={method}", "wbits=4", "abits=8", *extra)
    record = _saved(cfg, run(cfg))
    assert record["status"] == "ok"
    assert record["config"]["method"]["name"] == method
    assert record["weight_bits_per_layer"]["conv1"] == 8 and record["weight_bits_per_layer"]["layer1.0.conv1"] == 4
    assert record["average_weight_bits"] == 4
    assert record["calibration_images"] == cfg["calib"]["num_images"]


def test_attention_round_lowers_every_block_error_below_nearest():
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 1).eval()
    plan = plan_precision(model, 2, 8, "conv1", "fc", EdgeLayerPolicy(), EdgeLayerPolicy())
    method = create_method({"name": "attention_round", "epochs": 10})
    model = prepare(model, plan, method)
    batches = list(torch.randn(64, 1, 28, 28).split(32))
    method.initialize(model, batches, train_mode=False)
    log = method.finalize(model, batches)
    blocks = {k: v for k, v in log.items() if "error_rounded" in v}
    assert list(blocks) == ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                            "layer3.1", "layer4.0", "layer4.1", "fc"]
    two_bit_blocks = [k for k in blocks if k.startswith("layer")]  # conv1 and fc are 8-bit
    assert all(blocks[k]["error_rounded"] < blocks[k]["error_nearest"] for k in two_bit_blocks)
    assert all(q.hard for q in weight_quantizers(model).values())


def test_mixed_precision_records_its_per_layer_bits(make_config):
    cfg = make_config("method=ptq_nearest", "method.mixed_precision=true", "wbits=4", "abits=8")
    record = _saved(cfg, run(cfg))
    assert record["status"] == "ok"
    bits = record["weight_bits_per_layer"]
    lengths = record["coding_length_bits_per_weight"]
    assert set(lengths) <= set(bits) and "conv1" not in lengths and "fc" not in lengths
    assert bits["conv1"] == 8 and bits["fc"] == 8
    assert record["average_weight_bits"] <= 4 + 1e-9
    assert len({bits[k] for k in lengths}) > 1
    assert all(record["layer_precision"][k][0] == bits[k] for k in bits)
    ranked = sorted(lengths, key=lengths.get)
    assert all(bits[a] <= bits[b] for a, b in zip(ranked, ranked[1:]))


def test_mixed_precision_leaves_edge_layers_at_their_policy_even_at_the_body_bits():
    model = create_model("resnet18", 10, 1)
    edge = EdgeLayerPolicy(weight_bits=4, input_bits=8)  # the first layer at the body's bits
    plan = plan_precision(model, 4, 8, "conv1", "fc", edge, EdgeLayerPolicy())
    method = create_method({"name": "ptq_nearest", "mixed_precision": True})
    adjusted = method.adjust_plan(model, plan)
    assert plan["conv1"].role == "first" and plan["fc"].role == "last"
    assert adjusted["conv1"] == plan["conv1"] and adjusted["fc"] == plan["fc"]
    body = [name for name, p in plan.items() if p.role == "body"]
    assert len({adjusted[name].weight_bits for name in body}) > 1
