"""LSQ+: configuration presets, initialisations, offset modes, and LSQ as its configuration 1."""
import math

import pytest
import torch
import torch.nn.functional as F

from qbench.methods import create_method
from qbench.models import create_model
from qbench.phases import prepare
from qbench.quant import EdgeLayerPolicy, LearnedStepQuantizer, Observation, plan_precision
from qbench.quant.calibrate import input_quantizers, weight_quantizers


@pytest.mark.parametrize("config,signed,asym,offset", [
    (1, False, False, "zero"), (2, True, False, "zero"), (3, True, True, "learned"), (4, False, True, "learned"),
])
def test_config_presets(config, signed, asym, offset):
    c = create_method({"name": "lsqplus", "config": config}).config
    assert (c.act_signed, c.act_asymmetric, c.offset) == (signed, asym, offset)


def test_explicit_fields_override_the_preset():
    c = create_method({"name": "lsqplus", "config": 1, "act_signed": True}).config
    assert c.act_signed is True and c.act_asymmetric is False


@pytest.mark.parametrize("options,message", [
    ({"config": 5}, "method.config=5 is not allowed for method lsqplus; use 1, 2, 3 or 4$"),
    ({"config": "4"}, "method.config='4' is not allowed for method lsqplus; use 1, 2, 3 or 4$"),
    ({"init": "kaiming"}, "method.init='kaiming' is not allowed for method lsqplus; use minmax, lsq or lsqplus$"),
    ({"offset": "median"}, "method.offset='median' is not allowed for method lsqplus; use zero, learned, xmin or null$"),
    ({"act_signed": "auto"}, "method.act_signed='auto' is not allowed for method lsqplus; use true, false or null$"),
    ({"calib_batches": 0}, "method.calib_batches=0 is not allowed for method lsqplus; use an integer ≥ 1 or null$"),
    ({"config": 1, "offset": "learned"}, "needs an asymmetric activation grid"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_method({"name": "lsqplus", **options})


def swish_batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.silu(torch.randn(64, 32, generator=g) * 2 + 0.3) for _ in range(n)]


def reconstruction_error(q, batches):
    with torch.no_grad():
        return sum((q(x) - x).square().sum().item() for x in batches)


@pytest.mark.parametrize("signed,offset", [(False, "learned"), (True, "learned"), (False, "zero"), (True, "zero")])
@pytest.mark.parametrize("bits", [2, 4])
def test_mse_init_beats_lsq_and_minmax_on_the_same_batches(signed, offset, bits):
    batches = swish_batches()
    obs = Observation()
    for x in batches:
        obs.update(x)
    errors = {}
    for init in ("mse", "lsq", "minmax"):
        q = LearnedStepQuantizer(bits, signed=signed, offset=offset, init=init)
        q.initialize(obs)
        errors[init] = reconstruction_error(q, batches)
    assert errors["mse"] < errors["lsq"] and errors["mse"] < errors["minmax"], errors


def test_minmax_init_spans_the_observed_range():
    x = torch.tensor([-0.5, 0.1, 2.5])
    q = LearnedStepQuantizer(4, signed=False, offset="learned", init="minmax")
    q.initialize(Observation.of(x))
    assert q.step.item() == pytest.approx(3.0 / 15) and q.offset.item() == pytest.approx(-0.5)
    torch.testing.assert_close(q(x)[[0, 2]], torch.tensor([-0.5, 2.5]))
    sym = LearnedStepQuantizer(4, signed=True, init="minmax")
    sym.initialize(Observation.of(x))
    assert sym.step.item() == pytest.approx(max(2.5 / 7, 0.5 / 8))


@pytest.mark.parametrize("of_abs", [True, False])
def test_sigma3_weight_init(of_abs):
    w = torch.randn(1000) * 0.1 + 0.02
    q = LearnedStepQuantizer(3, signed=True, init="sigma3", sigma_of_abs=of_abs)
    q.initialize(Observation.of(w))
    v = (w.abs() if of_abs else w).double()
    mu, sigma = v.mean().item(), v.std().item()
    assert q.step.item() == pytest.approx(max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 4, rel=1e-5)


def test_xmin_offset_is_the_running_minimum_without_gradient():
    q = LearnedStepQuantizer(4, signed=False, offset="xmin", init="lsq")
    q.initialize(Observation.of(torch.tensor([-0.2, 0.0, 1.0])))
    assert q.offset.item() == pytest.approx(-0.2) and not q.offset.requires_grad
    assert "offset" in dict(q.named_buffers())
    q.train()
    q(torch.tensor([-0.7, 3.0]))
    assert q.offset.item() == pytest.approx(-0.7)
    q.eval()
    q(torch.tensor([-5.0]))
    assert q.offset.item() == pytest.approx(-0.7)


def test_learned_offset_gradient_uses_the_lsq_scale():
    q = LearnedStepQuantizer(2, signed=False, offset="learned", init="lsq")
    x = torch.tensor([-3.0, 0.2, 0.4, 9.0])
    q.initialize(Observation.of(x))
    q(x).sum().backward()
    s = q.step.item()
    z = x / s
    outside = ((z <= 0) | (z >= 3)).sum().item()
    assert q.offset.grad.item() == pytest.approx(outside / math.sqrt(4 * 3))


def prepared(method_options, seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet18", 10, 1)
    plan = plan_precision(model, 4, 4, "conv1", "fc", EdgeLayerPolicy(), EdgeLayerPolicy())
    method = create_method(method_options)
    model = prepare(model, plan, method)
    method.initialize(model, [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))], train_mode=False)
    return model


def test_config_1_with_lsq_init_is_exactly_lsq():
    lsq = prepared({"name": "lsq"})
    plus = prepared({"name": "lsqplus", "config": 1, "init": "lsq"})
    assert lsq.state_dict().keys() == plus.state_dict().keys()
    for key, value in lsq.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(plus.state_dict()[key], value, msg=key)
    x = torch.randn(4, 1, 28, 28)
    lsq.eval(), plus.eval()
    torch.testing.assert_close(plus(x), lsq(x))


def test_config_4_learns_an_offset_on_every_hidden_input():
    model = prepared({"name": "lsqplus", "config": 4, "mse_steps": 5})
    quantizers = input_quantizers(model)
    assert quantizers["conv1"].offset is None and quantizers["conv1"].signed is True
    hidden = [q for name, q in quantizers.items() if name != "conv1"]
    assert all(q.offset_mode == "learned" and q.signed is False for q in hidden)
    assert all(q.init == "sigma3" for q in weight_quantizers(model).values())
