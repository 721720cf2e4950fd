"""Every fused quantizer kernel computes what its eager form computes, forward and backward, in
the layouts the network feeds it: one test, parametrised over the quantizer functions that call
the registered kernels (:mod:`qbench.quant.kernels`)."""
from typing import Callable

import pytest
import torch

from qbench.quant.apot import LevelTable, RCFQuantize, apot_levels
from qbench.quant.attention_round import attention_round, mse_step
from qbench.quant.faq import FixedPointFakeQuant
from qbench.quant.fused import BatchNormActQuant
from qbench.quant.kernels import compile_kernels
from qbench.quant.lsq import LearnedStepFakeQuant

Tensors = list[torch.Tensor | None]


def channels_last(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).contiguous(memory_format=torch.channels_last)


def learned_step(with_offset: bool) -> Callable[[], Tensors]:
    def case() -> Tensors:
        x = channels_last(6, 5, 4, 3, scale=3).requires_grad_(True)
        s = torch.tensor(0.4, requires_grad=True)
        b = torch.tensor(0.3, requires_grad=True) if with_offset else None
        out = LearnedStepFakeQuant.apply(x, s, b, -4, 3, 0.5)
        out.backward(torch.randn(6, 5, 4, 3))  # contiguous: a layout other than x's
        assert out.is_contiguous(memory_format=torch.channels_last)
        return [out, x.grad, s.grad, None if b is None else b.grad]
    return case


def apot_rcf() -> Tensors:
    """Signed (weight-normalised) and unsigned calls through one compiled kernel: each call keeps
    its own clipping range and gradient outside it (a kernel given Python floats once clipped
    signed weights at 0)."""
    weights = channels_last(64, 32, 3, 3, scale=0.05)
    activations = torch.randn(32, 16, 7, 7).relu() * 3
    out = []
    for v, signed, grad_outside in [(weights, True, 1.0), (activations, False, 0.0), (weights, True, 0.0)]:
        x = v.clone().requires_grad_(True)
        alpha = torch.tensor(1.5, requires_grad=True)
        lo = -1.0 if signed else 0.0
        y = RCFQuantize.apply(x, alpha, LevelTable.build(apot_levels(2, signed), lo), lo, grad_outside, signed)
        y.backward(torch.ones_like(y))
        out += [y, x.grad, alpha.grad]
    return out


def fixed_point() -> Tensors:
    x = channels_last(6, 5, 4, 3).requires_grad_(True)
    out = FixedPointFakeQuant.apply(x, torch.tensor(0.25), -8, 7, True)
    out.backward(torch.randn(6, 5, 4, 3))
    return [out, x.grad]


def attention() -> Tensors:
    w = torch.randn(8, 4, 3, 3)
    step = torch.full((8, 1, 1, 1), 0.2)
    offset = (torch.rand(8, 4, 3, 3) - 0.5).requires_grad_(True)
    out = attention_round(w, step, offset, 0.3, -8, 7, window=3)
    out.backward(torch.randn(8, 4, 3, 3))
    return [out, offset.grad]


def batch_norm_act_quant(act: str) -> Callable[[], Tensors]:
    def case() -> Tensors:
        x = channels_last(8, 6, 5, 4, scale=2).requires_grad_(True)
        weight, bias = (torch.rand(6) + 0.5).requires_grad_(True), torch.randn(6).requires_grad_(True)
        s, b = torch.tensor(0.3, requires_grad=True), torch.tensor(-0.2, requires_grad=True)
        running_mean, running_var = torch.zeros(6), torch.ones(6)
        out = BatchNormActQuant.apply(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, act, s, b,
                                      -8, 7, 0.5)
        out.backward(torch.randn(8, 6, 5, 4))
        return [out, x.grad, weight.grad, bias.grad, s.grad, b.grad, running_mean, running_var]
    return case


def rounding_error() -> Tensors:
    return [mse_step(torch.randn(4, 500), torch.full((4, 1), 0.5), -8, 7)]


CASES = {"lsq": learned_step(False), "lsqplus_offset": learned_step(True), "apot_rcf": apot_rcf,
         "batch_norm_relu6_lsqplus": batch_norm_act_quant("relu6"), "batch_norm_silu_lsqplus": batch_norm_act_quant("silu"),
         "faq_fixed_point": fixed_point, "attention_round": attention, "attention_round_mse_step": rounding_error}
# (rtol, atol) where not assert_close's float32 defaults: APoT's weight normalisation takes the
# mean and std by fused reductions, whose summation order is not eager's; the one-ulp differences
# reach α's gradient, a sum over 18k weights, as ~4e-6 relative.
TOLERANCES = {"apot_rcf": (2e-5, 1e-4)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_compiled_kernel_matches_the_eager_one(name):
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        compile_kernels(compiled)
        try:
            results.append(CASES[name]())
        finally:
            compile_kernels(False)
    eager, fused = results
    assert len(eager) == len(fused)
    rtol, atol = TOLERANCES.get(name, (None, None))
    for a, b in zip(eager, fused):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
