"""The C++ APoT op (``runtime.native_kernels``, :func:`qbench.quant.native.rcf_quantize`) computes
what :class:`qbench.quant.apot.RCFQuantize`'s eager kernels compute: the forward and ∂L/∂v bit for
bit without weight normalisation, ∂L/∂α to float rounding (against a float64 reference); with
weight normalisation everything against a float64 reference; its sums do not depend on the
thread count; a quantizer and a network step give the Python path's numbers."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from qbench.quant import apot, native
from qbench.quant.apot import APoTQuantizer, LevelTable, RCFQuantize, apot_levels
from qbench.quant.kernels import flatten, memory_order


@pytest.fixture(autouse=True)
def native_on():
    native.use_native_kernels(True)
    yield
    native.use_native_kernels(False)


# (bits, signed, kind): every APoT, PoT and uniform set of 2-5 bits (chains of selects), uniform 6
# unsigned (64 levels: the longest chain), PoT 7 and uniform 8 (binary search over the midpoints)
LEVEL_SETS = [(b, s, k) for k in ("apot", "pot", "uniform") for b in (2, 3, 4, 5) for s in (True, False)]
LEVEL_SETS += [(6, False, "uniform"), (6, True, "apot"), (7, False, "pot"), (8, False, "uniform")]


def table_of(bits: int, signed: bool, kind: str) -> tuple[LevelTable, float]:
    lo = -1.0 if signed else 0.0
    return LevelTable.build(apot_levels(bits, signed, kind), lo), lo


def values(shape: tuple[int, ...], table: LevelTable, special: bool) -> torch.Tensor:
    """Normal values, the level set's midpoints exactly (ties: the lower level), values beyond
    both ends and, with ``special``, ±inf and NaN."""
    torch.manual_seed(0)
    v = torch.randn(shape) * 0.6
    flat = v.view(-1)
    mids = table.bounds[:-1]
    flat[:mids.numel()] = mids
    flat[mids.numel():mids.numel() + 2] = torch.tensor([5.0, -5.0])
    if special:
        flat[mids.numel() + 2:mids.numel() + 5] = torch.tensor([math.inf, -math.inf, math.nan])
    return v


def layouts(v: torch.Tensor) -> list[torch.Tensor]:
    """``v``, a channels_last copy and a channel slice (as MixNet's mixed-kernel convs take)."""
    wide = torch.cat([v, v], dim=1).contiguous(memory_format=torch.channels_last)
    return [v, v.contiguous(memory_format=torch.channels_last), wide[:, 3:3 + v.shape[1]]]


def eager(v: torch.Tensor, alpha: float, table: LevelTable, lo: float, grad_out: torch.Tensor,
          grad_outside: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, ∂L/∂v) of the eager kernels without weight normalisation, on ``v``'s memory order."""
    order = memory_order(v)
    flat, g = flatten(v, order), flatten(grad_out, order)
    zero, one, a = v.new_zeros(()), v.new_ones(()), v.new_tensor(alpha)
    args = (flat, zero, one, a, v.new_tensor(lo), table.levels, table.bounds, table.first, table.inv_cell)
    out = apot._rcf_forward.fn(*args)
    grad_v = apot._rcf_backward.fn(*args, g, v.new_tensor(grad_outside))[0]
    return out, grad_v


@pytest.mark.parametrize("bits,signed,kind", LEVEL_SETS)
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_forward_and_grad_v_are_the_eager_kernels_bit_for_bit(bits, signed, kind, alpha):
    table, lo = table_of(bits, signed, kind)
    special = table.levels.numel() <= apot.MAX_CHAIN_LEVELS  # the eager cell table has no NaN rule
    grad_outside = 1.0 if signed else 0.0
    for v in layouts(values((6, 8, 9, 11), table, special)):
        x = v.detach().requires_grad_(True)  # a leaf with v's strides, the slice's too
        a = torch.tensor(alpha, requires_grad=True)
        out = native.rcf_quantize(x, a, table.levels, table.bounds, lo, grad_outside, False)
        grad_out = torch.randn(v.shape)
        out.backward(grad_out)
        expected, grad_v = eager(v, alpha, table, lo, grad_out, grad_outside)
        order = memory_order(v)
        assert torch.equal(flatten(out.detach(), order).nan_to_num(123.0), expected.nan_to_num(123.0))
        assert torch.equal(flatten(x.grad, order), grad_v)
        if v.is_contiguous() or v.is_contiguous(memory_format=torch.channels_last):
            assert out.stride() == v.stride() and x.grad.stride() == v.stride()


@pytest.mark.parametrize("bits,signed,kind", LEVEL_SETS)
def test_alpha_gradient_matches_a_float64_reference(bits, signed, kind):
    table, lo = table_of(bits, signed, kind)
    torch.manual_seed(1)
    v, grad_out = torch.randn(70_001) * 0.5, torch.randn(70_001)  # several blocks and a tail
    a = torch.tensor(0.7, requires_grad=True)
    native.rcf_quantize(v, a, table.levels, table.bounds, lo, 0.0, False).backward(grad_out)
    t64 = LevelTable.build(apot_levels(bits, signed, kind).double(), lo)
    d = v.double()
    args = (d, d.new_zeros(()), d.new_ones(()), d.new_tensor(0.7), d.new_tensor(lo), t64.levels, t64.bounds,
            t64.first, t64.inv_cell)
    ref = apot._rcf_backward.fn(*args, grad_out.double(), d.new_tensor(0.0))[1]
    assert a.grad.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-3)


def float64_reference(v: torch.Tensor, alpha: float, table: LevelTable, lo: float, grad_out: torch.Tensor,
                      grad_outside: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂, ∂L/∂v, ∂L/∂α) with weight normalisation, all in float64 through the Python op."""
    t64 = LevelTable(table.levels.double(), table.bounds.double(), table.first, table.inv_cell.double())
    x = v.double().requires_grad_(True)
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    out = RCFQuantize.apply(x, a, t64, lo, grad_outside, True)
    out.backward(grad_out.double())
    return out.detach(), x.grad, a.grad


@pytest.mark.parametrize("offset", [0.0, 40.0])
@pytest.mark.parametrize("bits,signed,kind", [(4, True, "apot"), (3, True, "pot"), (5, True, "uniform"),
                                              (2, True, "apot")])
def test_weight_normalisation_matches_a_float64_reference(bits, signed, kind, offset):
    """Mean and standard deviation summed in double: accurate where a float sum is not (weights
    40 standard deviations off zero)."""
    table, lo = table_of(bits, signed, kind)
    torch.manual_seed(2)
    w = torch.randn(64, 48, 3, 3).contiguous(memory_format=torch.channels_last) * 0.05 + offset * 0.05
    grad_out = torch.randn(w.shape)
    x = w.clone().requires_grad_(True)
    a = torch.tensor(2.5, requires_grad=True)
    out = native.rcf_quantize(x, a, table.levels, table.bounds, lo, 1.0, True)
    out.backward(grad_out)
    ref_out, ref_grad_v, ref_alpha = float64_reference(w, 2.5, table, lo, grad_out, 1.0)
    # α·level rounds to float; a value within float rounding of a midpoint may take the other
    # level: a handful at most
    assert ((out.double() - ref_out).abs() > 1e-5).sum().item() <= 3
    assert (x.grad.double() - ref_grad_v).norm() <= 1e-5 * ref_grad_v.norm()
    assert a.grad.item() == pytest.approx(ref_alpha.item(), rel=1e-4, abs=1e-3)


def test_sums_do_not_depend_on_the_thread_count():
    table, lo = table_of(4, True, "apot")
    torch.manual_seed(3)
    w, grad_out = torch.randn(300_000), torch.randn(300_000)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            x, a = w.clone().requires_grad_(True), torch.tensor(3.0, requires_grad=True)
            native.rcf_quantize(x, a, table.levels, table.bounds, lo, 0.0, True).backward(grad_out)
            results.append((x.grad, a.grad.item()))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r[0], results[0][0]) and r[1] == results[0][1] for r in results[1:])


@pytest.mark.parametrize("signed,weight_norm,kind", [(False, False, "apot"), (True, True, "apot"),
                                                     (True, True, "uniform"), (False, False, "pot")])
def test_a_quantizer_gives_the_python_paths_values_and_gradients(signed, weight_norm, kind):
    torch.manual_seed(4)
    v = torch.randn(16, 8, 6, 6).contiguous(memory_format=torch.channels_last) * 2 + (0 if signed else 1)
    grad_out = torch.randn(v.shape)
    results = []
    for enabled in (False, True):
        native.use_native_kernels(enabled)
        q = APoTQuantizer(4, signed, kind, alpha_init=3.0, weight_norm=weight_norm)
        x = v.clone().requires_grad_(True)
        out = q(x)
        out.backward(grad_out)
        results.append((out.detach(), x.grad, q.alpha.grad))
    (out0, gx0, ga0), (out1, gx1, ga1) = results
    assert out1.stride() == out0.stride()
    if weight_norm:
        assert (out0 != out1).sum().item() <= 3
        assert (gx1 - gx0).norm() <= 1e-5 * gx0.norm()
    else:
        assert torch.equal(out0, out1) and torch.equal(gx0, gx1)
    assert ga1.item() == pytest.approx(ga0.item(), rel=1e-4, abs=1e-4)


def test_other_dtypes_go_the_python_way():
    q = APoTQuantizer(3, True, weight_norm=True).double()
    out = q(torch.randn(8, 6, dtype=torch.float64, requires_grad=True))
    assert isinstance(out.grad_fn, RCFQuantize._backward_cls)
    out32 = APoTQuantizer(3, True)(torch.randn(8, 6, requires_grad=True))
    assert not isinstance(out32.grad_fn, RCFQuantize._backward_cls)  # float32 takes the C++ op


def test_a_resnet18_step_gives_the_python_paths_loss_and_gradients(quantized_network):
    model, x = quantized_network("resnet18", "apot", 4)
    y = torch.randint(0, 10, (8,))
    state = copy.deepcopy(model.state_dict())
    losses, grads = [], []
    for enabled in (False, True):
        native.use_native_kernels(enabled)
        model.load_state_dict(state)
        model.train().zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # weight normalisation sums in double natively: the losses agree to float rounding
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert grads[0].keys() == grads[1].keys() and any(".alpha" in n for n in grads[0])
    python, cpp = (torch.cat([g[n].flatten() for n in sorted(grads[0])]) for g in grads)
    assert (cpp - python).norm() <= 1e-3 * python.norm()
