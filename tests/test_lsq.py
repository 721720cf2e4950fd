"""LSQ quantizer math against the paper's formulas, element by element."""
import math

import pytest
import torch
from torch import nn

from qbench.methods import create_method
from qbench.quant import (LayerPrecision, LearnedStepFakeQuant, LearnedStepQuantizer, Observation, integer_range,
                          quantize_model)


def reference_forward(v, s, beta, n, p):
    """v̂ = s·round(clamp((v − β)/s, n, p)) + β, written element by element."""
    out = []
    for x in v.tolist():
        z = (x - beta) / s
        out.append(s * round(min(max(z, n), p)) + beta)
    return torch.tensor(out, dtype=torch.float64)


def reference_grads(v, s, beta, n, p):
    """Per-element ∂v̂/∂v, ∂v̂/∂s, ∂v̂/∂β from LSQ eq. 3 and LSQ+ eq. 5-6."""
    dv, ds, db = [], [], []
    for x in v.tolist():
        z = (x - beta) / s
        if z <= n:
            dv.append(0.0), ds.append(float(n)), db.append(1.0)
        elif z >= p:
            dv.append(0.0), ds.append(float(p)), db.append(1.0)
        else:
            dv.append(1.0), ds.append(round(z) - z), db.append(0.0)
    return [torch.tensor(t, dtype=torch.float64) for t in (dv, ds, db)]


@pytest.mark.parametrize("bits,signed", [(2, True), (3, False), (4, True), (8, False)])
@pytest.mark.parametrize("with_offset", [False, True])
def test_forward_and_gradients_match_the_paper(bits, signed, with_offset):
    torch.manual_seed(bits)
    n, p = integer_range(bits, signed)
    s, beta = 0.37, (-0.21 if with_offset else 0.0)
    # Values below, inside and above the range, avoiding exact rounding ties.
    v = torch.linspace(beta + s * (n - 3.13), beta + s * (p + 3.07), 301, dtype=torch.float64)
    v.requires_grad_(True)
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    offset = torch.tensor(beta, dtype=torch.float64, requires_grad=True) if with_offset else None
    g = 0.123
    upstream = torch.randn(v.shape, dtype=torch.float64)
    out = LearnedStepFakeQuant.apply(v, step, offset, n, p, g)
    torch.testing.assert_close(out, reference_forward(v.detach(), s, beta, n, p))
    out.backward(upstream)
    dv, ds, db = reference_grads(v.detach(), s, beta, n, p)
    torch.testing.assert_close(v.grad, upstream * dv)
    torch.testing.assert_close(step.grad, g * (upstream * ds).sum())
    if with_offset:
        torch.testing.assert_close(offset.grad, g * (upstream * db).sum())
    below, above = (v.detach() - beta) / s <= n, (v.detach() - beta) / s >= p
    assert below.any() and above.any() and (~below & ~above).any()


def test_integer_ranges():
    assert integer_range(2, True) == (-2, 1)
    assert integer_range(4, True) == (-8, 7)
    assert integer_range(4, False) == (0, 15)
    assert integer_range(8, False) == (0, 255)


def test_init_and_gradient_scale_follow_lsq():
    w = torch.randn(64, 32, 3, 3)
    q = LearnedStepQuantizer(4, signed=True)
    q.initialize(Observation.of(w))
    qp = 7
    assert q.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(qp), rel=1e-5)
    assert q.grad_scale(w) == pytest.approx(1 / math.sqrt(w.numel() * qp))
    a = torch.rand(8, 16, 5, 5)
    qa = LearnedStepQuantizer(3, signed=False, per_example_numel=True)
    qa.initialize(Observation.of(a))
    assert qa.grad_scale(a) == pytest.approx(1 / math.sqrt(16 * 25 * 7))
    assert LearnedStepQuantizer(3, signed=False, grad_scale=False).grad_scale(a) == 1.0


def test_output_lies_on_the_grid_and_unsigned_clips_negatives():
    q = LearnedStepQuantizer(3, signed=False)
    x = torch.randn(1000)
    q.initialize(Observation.of(x))
    y = q(x)
    codes = y / q.step
    torch.testing.assert_close(codes, codes.round())
    assert codes.min() >= 0 and codes.max() <= 7
    assert (y[x < 0] == 0).all()


def test_auto_signedness_is_decided_by_the_data_and_survives_a_state_dict():
    q = LearnedStepQuantizer(4, signed=None)
    q.initialize(Observation.of(torch.randn(100)))
    assert q.signed is True
    q2 = LearnedStepQuantizer(4, signed=None)
    q2.load_state_dict(q.state_dict(), strict=True)
    assert q2.signed is True and q2.step.item() == q.step.item()
    q3 = LearnedStepQuantizer(4, signed=None)
    q3.initialize(Observation.of(torch.rand(100)))
    assert q3.signed is False


def test_an_uninitialised_quantizer_refuses_to_quantize_until_initialised_or_loaded():
    q = LearnedStepQuantizer(4, signed=True)
    with pytest.raises(RuntimeError, match="before it was initialised"):
        q(torch.randn(10))
    q.enabled = False
    torch.testing.assert_close(q(torch.ones(3)), torch.ones(3))  # calibration runs the float path
    ready = LearnedStepQuantizer(4, signed=True)
    ready.initialize(Observation.of(torch.randn(100)))
    q.load_state_dict(ready.state_dict(), strict=True)
    q.enabled = True
    assert q.initialized and torch.isfinite(q(torch.randn(10))).all()


def test_step_stays_positive_and_recovers():
    q = LearnedStepQuantizer(4, signed=True)
    q.initialize(Observation.of(torch.randn(100)))
    with torch.no_grad():
        q.step.fill_(-1.0)
    x = torch.randn(100)
    y = q(x)
    assert torch.isfinite(y).all()
    (y - 3 * x).square().sum().backward()
    assert q.step.grad is not None and q.step.grad.item() != 0.0


def test_one_sgd_step_moves_the_step_and_reduces_error():
    torch.manual_seed(0)
    x = torch.randn(4096) * 2
    q = LearnedStepQuantizer(3, signed=True, grad_scale=False)
    q.initialize(Observation.of(x))
    with torch.no_grad():
        q.step.fill_(0.05)  # far too small: most values clip
    opt = torch.optim.SGD(q.parameters(), lr=1e-4)
    before = (q(x) - x).square().mean().item()
    for _ in range(20):
        opt.zero_grad()
        (q(x) - x).square().mean().mul(4096).backward()
        opt.step()
    assert q.step.item() > 0.05
    assert (q(x) - x).square().mean().item() < before


def test_changing_the_input_in_place_before_the_backward_is_an_error():
    v = torch.randn(4, 10).requires_grad_(True)
    x = v * 1.0
    out = LearnedStepFakeQuant.apply(x, torch.tensor(0.3, requires_grad=True), None, -4, 3, 1.0)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("method_name", ["lsq", "lsqplus"])
def test_a_step_driven_through_zero_is_reported_and_zeroes_its_tensor(method_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    method = create_method({"name": method_name})
    plan = {"0": LayerPrecision(4, 8, True), "2": LayerPrecision(4, 4)}
    quantize_model(model, plan, method.weight_quantizer, method.input_quantizer)
    x = torch.randn(2, 3, 9, 9)
    method.initialize(model, [x], train_mode=False)
    assert method.report(model, None) == {"steps_at_floor": []}
    with torch.no_grad():
        model[2].weight_quantizer.step.fill_(-0.01)
        model[0].input_quantizer.step.fill_(1e-8)
    assert method.report(model, None) == {"steps_at_floor": ["0.input_quantizer", "2.weight_quantizer"]}
    assert model[2].weight_quantizer(model[2].weight).abs().max() < 1e-6  # ±p steps of about 1e-8
