"""FAQ: the fixed-point quantizer against its formula, the calibration statistic against numpy,
the 8-bit edge layers, the per-layer cosine similarity and one run end to end."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qbench.identity import baseline_config
from qbench.methods import create_method
from qbench.methods.faq import weight_cosine
from qbench.methods.registry import RunFacts
from qbench.models import MODELS, create_model
from qbench.phases import prepare
from qbench.quant.calibrate import input_quantizers, quantized_layers, weight_quantizers
from qbench.quant.convert import EdgeLayerPolicy, LayerPrecision, plan_precision
from qbench.quant.faq import FixedPointFakeQuant, FixedPointQuantizer, fixed_point_step, percentile
from qbench.quant.grid import integer_range
from qbench.quant.observer import Observation
from qbench.run import qat_recipe, run


def reference(v, step, n, p):
    """Q_{b,l}(v) = 2^l·clamp(round(v/2^l), n, p) and the clipped STE's ∂Q/∂v, element by element
    (Python's round is half to even, as torch.round)."""
    out, grad = [], []
    for x in v.tolist():
        z = x / step
        out.append(step * min(max(round(z), n), p))
        grad.append(1.0 if n <= z <= p else 0.0)
    return torch.tensor(out, dtype=torch.float64), torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (4, False), (8, True), (8, False)])
def test_quantizer_matches_the_formula_with_clipped_ste(bits, signed):
    n, p = integer_range(bits, signed)
    step = 2.0**-3
    v = torch.linspace(step * (n - 4.3), step * (p + 4.1), 997, dtype=torch.float64).requires_grad_(True)
    upstream = torch.randn(v.shape, dtype=torch.float64)
    out = FixedPointFakeQuant.apply(v, torch.tensor(step, dtype=torch.float64), n, p, True)
    expected, grad = reference(v.detach(), step, n, p)
    torch.testing.assert_close(out, expected)
    codes = out.detach() / step
    torch.testing.assert_close(codes, codes.round())  # on the grid 2^l·k
    assert codes.min().item() == n and codes.max().item() == p  # clipped to [n, p]
    out.backward(upstream)
    torch.testing.assert_close(v.grad, upstream * grad)
    assert (grad == 0).any() and (grad == 1).any()


def test_rounding_is_to_nearest_with_ties_to_even():
    v = torch.tensor([0.24, 0.26, 0.25, 0.75, -0.25, -0.26, 1.1])
    out = FixedPointFakeQuant.apply(v, torch.tensor(0.5), -4, 3, True)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.0, 1.0, -0.0, -0.5, 1.0]))


def test_identity_ste_passes_every_gradient():
    v = torch.tensor([-9.0, 0.3, 9.0], requires_grad=True)
    FixedPointFakeQuant.apply(v, torch.tensor(0.25), -8, 7, False).sum().backward()
    torch.testing.assert_close(v.grad, torch.ones(3))


@pytest.mark.parametrize("y,bits,signed,expected", [
    (3.0, 4, True, 0.5),         # R = 4 = 2^2, l = 2 − 3
    (3.0, 4, False, 0.25),       # l = 2 − 4
    (4.0, 8, True, 4.0 / 128),   # a power of two stays
    (0.3, 8, False, 0.5 / 256),  # R = 2^−1
])
def test_step_is_a_power_of_two_covering_the_range(y, bits, signed, expected):
    step = fixed_point_step(torch.tensor(y), bits, signed).item()
    assert step == expected
    assert math.log2(step) == math.ceil(math.log2(y)) - (bits - 1 if signed else bits)
    assert fixed_point_step(torch.tensor(y), bits, signed, power_of_two=False).item() == pytest.approx(
        y / 2 ** (bits - 1 if signed else bits))


@pytest.mark.parametrize("q", [0.0, 50.0, 99.9, 99.99, 100.0])
@pytest.mark.parametrize("n", [1, 7, 100_003])
def test_percentile_matches_numpy(q, n):
    data = np.random.default_rng(n).standard_exponential(n)
    assert percentile(torch.from_numpy(data), q).item() == pytest.approx(np.percentile(data, q), rel=1e-12)


def test_activation_calibration_uses_the_percentile_of_abs_values():
    data = np.random.default_rng(0).normal(0.0, 2.0, 50_000).astype(np.float32)
    obs = Observation(max_samples=1 << 20)
    for chunk in np.split(data, 5):
        obs.update(torch.from_numpy(chunk))
    q = FixedPointQuantizer(4, signed=True, statistic="percentile", level=99.9)
    q.initialize(obs)
    y = np.percentile(np.abs(data), 99.9)
    assert q.step.item() == 2.0 ** (math.ceil(math.log2(y)) - 3)
    w = torch.from_numpy(data)
    wq = FixedPointQuantizer(4, signed=True, statistic="std", level=2.5)
    wq.initialize(Observation.of(w))
    assert wq.step.item() == 2.0 ** (math.ceil(math.log2(2.5 * data.std())) - 3)


def test_tracked_weight_range_follows_the_weights():
    q = FixedPointQuantizer(4, signed=True, statistic="std", level=2.0, track=True)
    w = torch.randn(1000)
    q(w)
    assert q.step.item() == 2.0 ** (math.ceil(math.log2(2.0 * w.std(correction=0).item())) - 3)
    q(w * 8)
    assert q.step.item() == 2.0 ** (math.ceil(math.log2(16.0 * w.std(correction=0).item())) - 3)


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()


def toy_plan(model, bits):
    return plan_precision(model, bits, bits, "0", "7", EdgeLayerPolicy(), EdgeLayerPolicy())


def test_calibration_takes_the_configured_batches_and_percentiles():
    model = toy_model()
    batches = [torch.randn(4, 1, 12, 12) for _ in range(3)]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: seen.setdefault(name, []).append(args[0].detach().flatten()))
        for name in ("0", "2", "4", "7")]
    with torch.no_grad():
        for x in batches[:2]:
            model(x)
    for h in hooks:
        h.remove()
    method = create_method({"name": "faq", "calib_batches": 2})
    model = prepare(model, toy_plan(model, 4), method)
    method.initialize(model, batches, train_mode=False)
    assert method.report(model, facts(toy_model(), model, len(batches)))["calib_batches_used"] == 2
    for name, q in input_quantizers(model).items():
        values = torch.cat(seen[name]).abs().numpy()
        level = 99.99 if q.bits == 8 else 99.9
        y = np.percentile(values, level)
        assert q.step.item() == 2.0 ** (math.ceil(math.log2(y)) - (q.bits - 1 if q.signed else q.bits)), name
    assert input_quantizers(model)["0"].signed and not input_quantizers(model)["2"].signed


def test_first_and_last_layers_stay_at_8_bits_in_a_w4a4_network(make_config):
    cfg = make_config("method=faq", "bits=4")
    spec = MODELS[cfg["model"]["name"]]
    model = create_model(spec.name, 10, 1)
    q = cfg["quant"]
    plan = plan_precision(model, cfg["wbits"], cfg["abits"], spec.first_layer, spec.last_layer,
                          EdgeLayerPolicy(**q["first_layer"]), EdgeLayerPolicy(**q["last_layer"]))
    method = create_method(cfg["method"])
    model = prepare(model, plan, method)
    weights, inputs = weight_quantizers(model), input_quantizers(model)
    for name in quantized_layers(model):
        edge = name in (spec.first_layer, spec.last_layer)
        assert weights[name].bits == inputs[name].bits == (8 if edge else 4), name
        assert weights[name].level == (5.0 if edge else 2.5)
        assert inputs[name].level == (99.99 if edge else 99.9)


def test_cosine_similarity_per_layer():
    a = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([3.0, 4.0]), "z": torch.randn(5, 3)}
    b = {"x": torch.tensor([1.0, 1.0]), "y": torch.tensor([-3.0, -4.0]), "z": a["z"].clone()}
    cos = weight_cosine(a, b)
    assert cos["x"] == pytest.approx(1 / math.sqrt(2))
    assert cos["y"] == pytest.approx(-1.0)
    assert cos["z"] == pytest.approx(1.0)


def facts(fp_model, model, batches: int | None) -> RunFacts:
    """What the runner would tell ``report``: 4 images a batch, ``None`` when resumed."""
    return RunFacts(fp_model, toy_plan(fp_model, 4), None if batches is None else 4 * batches, batches)


def test_report_compares_quantized_weights_to_the_fp_weights_layer_by_layer():
    model = toy_model()
    fp_model = copy.deepcopy(model)
    fp = {name: model.get_submodule(name).weight.detach().clone() for name in ("0", "2", "4", "7")}
    method = create_method({"name": "faq"})
    model = prepare(model, toy_plan(model, 4), method)
    method.initialize(model, [torch.randn(4, 1, 12, 12)], train_mode=False)
    report = method.report(model, facts(fp_model, model, 1))
    assert sorted(report["weight_cosine"]) == ["0", "2", "4", "7"]
    for name, layer in quantized_layers(model).items():
        expected = weight_cosine({name: fp[name]}, {name: layer.weight_quantizer(layer.weight)})[name]
        assert report["weight_cosine"][name] == pytest.approx(expected)
        assert 0.8 < expected < 1.0
    assert report["weight_cosine_mean"] == pytest.approx(np.mean(list(report["weight_cosine"].values())))
    with torch.no_grad():
        model.get_submodule("2").weight.mul_(-1)
    resumed = method.report(model, facts(fp_model, model, None))
    assert resumed["weight_cosine"]["2"] < -0.8 and resumed["calib_batches_used"] is None


@pytest.mark.parametrize("field,value,message", [
    ("act_statistic", "mean", "method.act_statistic='mean' is not allowed"),
    ("act_percentile_4bit", 120.0, "method.act_percentile_4bit=120.0 is not allowed"),
    ("weight_clip_std_8bit", 0.0, "method.weight_clip_std_8bit=0.0 is not allowed"),
    ("weight_range", "ema", "method.weight_range='ema' is not allowed"),
    ("ste", "soft", "method.ste='soft' is not allowed"),
    ("calib_batches", 0, "method.calib_batches=0 is not allowed"),
    ("act_signed", "maybe", "method.act_signed='maybe' is not allowed for method faq; use true, false or auto"),
    ("act_signed", "false", "method.act_signed='false' is not allowed for method faq; use true, false or auto"),
])
def test_bad_options_are_one_clear_error(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_method({"name": "faq", field: value})


def test_faq_recipes_share_the_local_fp_baseline_and_set_their_weight_decay(make_config):
    local = make_config("recipe=local")
    for recipe, bits, wd in (("faq_local_8bit", 8, 1.0e-4), ("faq_local_4bit", 4, 5.0e-5)):
        cfg = make_config("method=faq", f"recipe={recipe}", f"bits={bits}")
        assert baseline_config(cfg, "cpu") == baseline_config(local, "cpu")
        assert qat_recipe(cfg)["weight_decay"] == wd


def test_a_w4a4_run_records_the_weight_cosine(make_config):
    cfg = make_config("method=faq", "bits=4", "recipe=faq_local_4bit", "recipe.qat.epochs=2",
                      "recipe.qat.max_steps_per_epoch=2")
    record = run(cfg)
    assert record["status"] == "ok"
    spec = MODELS[cfg["model"]["name"]]
    assert record["layer_precision"][spec.first_layer] == [8, 8]
    assert record["layer_precision"][spec.last_layer] == [8, 8]
    assert sorted(record["weight_cosine"]) == sorted(record["layer_precision"])
    assert 0.5 < record["weight_cosine_mean"] <= 1.0
    assert record["calib_batches_used"] == 1
    input_steps = [pair[1] for pair in record["fixed_point_steps"].values()]
    assert all(math.log2(s) == round(math.log2(s)) for s in input_steps)  # activations: fixed point


def test_weights_are_clipped_at_the_asked_multiple_of_sigma_by_default():
    """The source clips weights at c·σ and bins them evenly: the default grid spans exactly
    2.5σ at 4 bits, where a power-of-two range would land anywhere in [2.5σ, 5σ)."""
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    method = create_method({"name": "faq"})
    q = method.weight_quantizer(LayerPrecision(4, 4))
    q.initialize(Observation.of(w))
    sigma = w.std(correction=0).item()
    assert q.step.item() * 2 ** 3 == pytest.approx(2.5 * sigma, rel=1e-5)
    pot = create_method({"name": "faq", "weight_power_of_two": True}).weight_quantizer(LayerPrecision(4, 4))
    pot.initialize(Observation.of(w))
    assert 2.5 * sigma < pot.step.item() * 2 ** 3 < 5 * sigma
    assert (q(w) - w).square().mean() < (pot(w) - w).square().mean()
