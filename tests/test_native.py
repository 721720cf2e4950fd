"""The C++ LSQ / LSQ+ op (``runtime.native_kernels``, :mod:`qbench.quant.native`) computes what
the eager formulas compute: the forward and ∂L/∂v bit for bit, the step and offset sums to float
rounding (against a float64 reference); its sums do not depend on the thread count; a network
and a run give the Python path's numbers."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from qbench.quant import layers, native
from qbench.quant.layers import QuantConv2d, RecomputedWeightConv
from qbench.quant.lsq import LearnedStepFakeQuant, LearnedStepQuantizer, fake_quantize, fake_quantize_grads
from qbench.quant.observer import Observation


@pytest.fixture(autouse=True)
def native_on():
    native.use_native_kernels(True)
    yield
    native.use_native_kernels(False)
    layers.recompute_weights(False)


def layouts(shape: tuple[int, ...], scale: float) -> list[torch.Tensor]:
    """A contiguous tensor and, for 4-D shapes, a channels_last one; with exact ties (k + ½ steps),
    values beyond both ends of the grid, ±inf and NaN."""
    torch.manual_seed(0)
    v = torch.randn(shape) * scale
    flat = v.view(-1)
    flat[:8] = torch.tensor([0.5, 1.5, -2.5, 2.5, 100.0, -100.0, math.inf, -math.inf]) * 0.25
    flat[8] = math.nan
    out = [v]
    if len(shape) == 4:
        out.append(v.contiguous(memory_format=torch.channels_last))
    return out


CASES = [((144, 1, 3, 3), 0.3), ((64, 48, 7, 5), 2.0), ((50001,), 1.0)]  # 50001: several blocks and a tail
GRIDS = [(-8, 7, None), (0, 15, None), (-2, 1, 0.3), (0, 255, -0.1)]


@pytest.mark.parametrize("shape,scale", CASES)
@pytest.mark.parametrize("qmin,qmax,offset", GRIDS)
def test_forward_and_grad_v_are_the_eager_formula_bit_for_bit(shape, scale, qmin, qmax, offset):
    for v in layouts(shape, scale):
        step = torch.tensor(0.25, requires_grad=True)
        beta = None if offset is None else torch.tensor(offset, requires_grad=True)
        x = v.clone().requires_grad_(True)
        out = native.learned_step_fake_quant(x, step, beta, qmin, qmax, 0.5)
        expected = fake_quantize(v, step.detach(), None if beta is None else beta.detach(), qmin, qmax)
        assert out.stride() == v.stride()
        assert torch.equal(out.nan_to_num(123.0), expected.nan_to_num(123.0))
        grad_out = torch.randn(shape)  # contiguous: another layout than a channels_last x
        out.backward(grad_out)
        grad_v, _, _ = fake_quantize_grads(v, step.detach(), None if beta is None else beta.detach(), grad_out,
                                           qmin, qmax)
        assert x.grad.stride() == v.stride()
        assert torch.equal(x.grad, grad_v)


IN_PLACE = {"identity": lambda v: v, "relu": torch.relu, "relu6": F.relu6}


@pytest.mark.parametrize("shape,scale", CASES)
@pytest.mark.parametrize("qmin,qmax,offset", GRIDS)
@pytest.mark.parametrize("activation", sorted(IN_PLACE))
def test_the_in_place_forward_is_the_activation_then_the_eager_formula_bit_for_bit(shape, scale, qmin, qmax,
                                                                                    offset, activation):
    step = torch.tensor(0.25)
    beta = None if offset is None else torch.tensor(offset)
    for v in layouts(shape, scale * 4):  # values beyond ReLU6's 6 too
        expected = fake_quantize(IN_PLACE[activation](v), step, beta, qmin, qmax)
        written = v.clone()
        address = written.data_ptr()
        out = native.learned_step_fake_quant_(written, step, beta, qmin, qmax, activation)
        assert out.data_ptr() == address and written.stride() == v.stride()
        assert torch.equal(written.nan_to_num(123.0), expected.nan_to_num(123.0))


def test_the_in_place_forward_refuses_a_tensor_that_needs_its_gradient():
    v = torch.randn(10, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient"):
        native.learned_step_fake_quant_(v.clone(), torch.tensor(0.1), None, 0, 3)


@pytest.mark.parametrize("shape,scale", CASES)
@pytest.mark.parametrize("qmin,qmax,offset", GRIDS)
def test_step_and_offset_gradients_match_a_float64_reference(shape, scale, qmin, qmax, offset):
    torch.manual_seed(1)
    v = torch.randn(shape) * scale
    grad_out = torch.randn(shape)
    step = torch.tensor(0.25, requires_grad=True)
    beta = None if offset is None else torch.tensor(offset, requires_grad=True)
    native.learned_step_fake_quant(v, step, beta, qmin, qmax, 0.5).backward(grad_out)
    b64 = None if beta is None else beta.detach().double()
    _, ref_step, ref_offset = fake_quantize_grads(v.double(), step.detach().double(), b64, grad_out.double(),
                                                  qmin, qmax)
    assert step.grad.item() == pytest.approx(0.5 * ref_step.item(), rel=1e-5, abs=1e-4)
    if beta is not None:
        assert beta.grad.item() == pytest.approx(0.5 * ref_offset.item(), rel=1e-5, abs=1e-4)


def test_sums_do_not_depend_on_the_thread_count():
    torch.manual_seed(2)
    v = torch.randn(300_000)
    grad_out = torch.randn(300_000)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            step, beta = torch.tensor(0.1, requires_grad=True), torch.tensor(0.05, requires_grad=True)
            native.learned_step_fake_quant(v, step, beta, -8, 7, 1.0).backward(grad_out)
            grads.append((step.grad.item(), beta.grad.item()))
    finally:
        torch.set_num_threads(threads)
    assert grads[0] == grads[1] == grads[2]


def test_a_step_below_the_floor_quantizes_with_the_floor_and_still_gets_its_gradient():
    v = torch.tensor([1e-8, 2e-8, -3e-8, 1.0])
    step = torch.tensor(-0.5, requires_grad=True)
    out = native.learned_step_fake_quant(v, step, None, -4, 3, 1.0)
    assert torch.equal(out, fake_quantize(v, torch.tensor(1e-8), None, -4, 3))
    out.sum().backward()
    assert step.grad.item() != 0.0


def quantizer(offset: str, init: str, signed: bool | None, samples: torch.Tensor) -> LearnedStepQuantizer:
    q = LearnedStepQuantizer(3, signed, offset=offset, init=init)
    q.initialize(Observation.of(samples))
    return q


@pytest.mark.parametrize("offset,init,signed", [("zero", "lsq", True), ("learned", "minmax", None),
                                                ("xmin", "minmax", False)])
def test_a_quantizer_gives_the_python_paths_values_and_gradients(offset, init, signed):
    torch.manual_seed(3)
    samples = torch.randn(32, 8, 6, 6).contiguous(memory_format=torch.channels_last) + 0.5
    results = []
    for enabled in (False, True):
        native.use_native_kernels(enabled)
        q = quantizer(offset, init, signed, samples).train()
        x = samples.clone().requires_grad_(True)
        out = q(x)
        out.backward(torch.ones_like(out))
        results.append((out, x.grad, q.step.grad, None if q.offset is None else (q.offset.grad, q.offset.clone())))
    (out0, gx0, gs0, off0), (out1, gx1, gs1, off1) = results
    assert torch.equal(out0, out1) and torch.equal(gx0, gx1)
    assert gs1.item() == pytest.approx(gs0.item(), rel=1e-5)
    if off0 is not None:
        assert torch.equal(off0[1], off1[1])  # the xmin buffer tracked alike
        assert (off0[0] is None) == (off1[0] is None)
        if off0[0] is not None:
            assert off1[0].item() == pytest.approx(off0[0].item(), rel=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_channel_slice_gives_the_python_paths_values_and_gradients(channels_last):
    """MixNet's mixed-kernel convs each quantize a channel slice of their input: a strided view."""
    torch.manual_seed(4)
    base = torch.randn(4, 12, 5, 5)
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(4, 5, 5, 5)
    results = []
    for enabled in (False, True):
        native.use_native_kernels(enabled)
        q = LearnedStepQuantizer(4, True)
        q.initialize(Observation.of(base))
        x = base.clone().requires_grad_(True)
        view = x[:, 3:8]
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        out = q(view)
        out.backward(grad_out)
        results.append((out, x.grad, q.step.grad))
    (out0, gx0, gs0), (out1, gx1, gs1) = results
    assert torch.equal(out0, out1) and torch.equal(gx0, gx1)
    assert gs1.item() == pytest.approx(gs0.item(), rel=1e-5)


def test_other_dtypes_go_the_python_way_and_the_switch_turns_it_off():
    v = torch.randn(8, 6)
    assert native.applies(v) and native.applies(v[:, ::2])
    assert not native.applies(v.double())
    q = LearnedStepQuantizer(4, True).double()
    q.initialize(Observation.of(v))
    out = q(v.double().requires_grad_(True))
    assert isinstance(out.grad_fn, LearnedStepFakeQuant._backward_cls)
    native.use_native_kernels(False)
    assert not native.applies(v)


@pytest.mark.parametrize("recompute", [False, True])
def test_a_network_step_gives_the_python_paths_loss_and_gradients(quantized_network, recompute):
    layers.recompute_weights(recompute)
    model, x = quantized_network("mobilenet_v2", "lsqplus", 3)
    y = torch.randint(0, 10, (8,))
    state = copy.deepcopy(model.state_dict())
    losses, grads = [], []
    for enabled in (False, True):
        native.use_native_kernels(enabled)
        model.load_state_dict(state)
        model.train().zero_grad()
        torch.manual_seed(1)  # the classifier's dropout
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == losses[1]  # the forward is bit for bit the Python path's
    assert grads[0].keys() == grads[1].keys()
    quantizer_params = [n for n in grads[0] if "_quantizer." in n]
    assert quantizer_params
    for name in grads[0].keys() - set(quantizer_params):  # ∂L/∂v is exact, so all that flows from it
        assert torch.equal(grads[1][name], grads[0][name]), name
    # step and offset sums in another order: they agree to 1e-3 of their norm (test_fused.py's bound)
    python, cpp = (torch.stack([g[n] for n in quantizer_params]) for g in grads)
    assert (cpp - python).norm() <= 1e-3 * python.norm()


def test_a_run_with_native_kernels_records_the_flag_and_reruns_to_the_same_numbers(make_config):
    """The flag is how the run trains (same run id); rerun, it gives the same top-1 and loss."""
    from qbench.identity import run_id
    from qbench.run import run

    cfg = make_config("method=lsq", "bits=3", "runtime.native_kernels=true")
    assert run_id(cfg) == run_id(make_config("method=lsq", "bits=3"))
    first = run(cfg)
    assert first["status"] == "ok" and first["config"]["runtime"]["native_kernels"] is True
    again = run({**cfg, "force": True})
    assert (again["metrics"]["top1"], again["metrics"]["loss"]) == (first["metrics"]["top1"], first["metrics"]["loss"])


def test_without_a_compiler_the_run_stops_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import sys

    import torch.utils.cpp_extension

    from qbench.cli import main

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'qbench_native'\nc++: not found")

    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["qbench", "runtime.device=cpu", "runtime.native_kernels=true",
                                      f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"])
    with pytest.raises(SystemExit) as exit_:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert lines[0] == ("qbench: error: runtime.native_kernels=true: cannot build the native quantizer ops "
                        "(qbench/quant/csrc): Error building extension 'qbench_native'; set it to false")
    assert list(tmp_path.iterdir()) == []


def quant_conv(groups: int, bias: bool, offset: str, stride: int) -> QuantConv2d:
    """A 12→12 channel 3×3 quantized conv (channels_last weights), LSQ / LSQ+ weight and input
    quantizers initialised on random data."""
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(12, 12, 3, stride=stride, padding=1, groups=groups, bias=bias)
    conv = conv.to(memory_format=torch.channels_last)
    weights = LearnedStepQuantizer(4, True, offset=offset)
    weights.initialize(Observation.of(conv.weight.detach()))
    inputs = LearnedStepQuantizer(4, False)
    inputs.initialize(Observation.of(torch.rand(2, 12, 9, 9)))
    return QuantConv2d(conv, weights, inputs)


@pytest.mark.parametrize("groups", [1, 12])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("offset", ["zero", "learned"])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_conv_recomputing_its_weight_gives_the_plain_paths_values_and_gradients_bit_for_bit(
        groups, bias, offset, stride):
    x = torch.rand(4, 12, 9, 9).contiguous(memory_format=torch.channels_last)
    grad_out = None
    results = []
    for recompute in (True, False):
        layers.recompute_weights(recompute)
        layer = quant_conv(groups, bias, offset, stride)
        inp = x.clone().requires_grad_(True)
        out = layer(inp)
        assert isinstance(out.grad_fn, RecomputedWeightConv._backward_cls) == recompute
        grad_out = torch.randn_like(out) if grad_out is None else grad_out
        out.backward(grad_out)
        results.append([out, inp.grad] + [p.grad for p in layer.parameters()])
    for got, expected in zip(*results):
        assert torch.equal(got, expected)


def test_a_conv_recomputing_its_weight_keeps_the_float_weight_not_the_quantized_one():
    layers.recompute_weights(True)
    layer = quant_conv(1, True, "learned", 1)
    x = torch.rand(4, 12, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    weight_sized = [t for t in saved if t.numel() == layer.weight.numel()]
    assert [t.untyped_storage().data_ptr() for t in weight_sized] == [layer.weight.untyped_storage().data_ptr()]
