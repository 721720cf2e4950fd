"""APoT levels, projection, RCF gradients and weight normalisation against the paper."""
import itertools

import pytest
import torch

from qbench.methods import create_method
from qbench.quant.apot import APoTQuantizer, MaxScaledQuantizer, RCFQuantize, apot_levels, project_to_levels


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("kind", ["apot", "pot", "uniform"])
def test_level_sets_are_sorted_normalised_and_complete(bits, signed, kind):
    levels = apot_levels(bits, signed, kind)
    assert torch.all(levels[1:] > levels[:-1])
    assert levels.max().item() == pytest.approx(1.0)
    assert len(levels) == (2**bits - 1 if signed else 2**bits)
    if signed:
        torch.testing.assert_close(levels, -levels.flip(0))
    else:
        assert levels.min().item() == 0.0


def test_hand_checked_values():
    torch.testing.assert_close(apot_levels(3, False).double(),
                               torch.tensor([0, .1, .2, .3, .4, .6, .8, 1], dtype=torch.float64), atol=1e-7, rtol=0)
    four = torch.tensor([0, 1 / 48, 2 / 48, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2,
                         2 / 3, 11 / 16, 3 / 4, 1], dtype=torch.float64)
    torch.testing.assert_close(apot_levels(4, False).double(), four, atol=1e-7, rtol=0)
    torch.testing.assert_close(apot_levels(3, True), torch.tensor([-1, -.5, -.25, 0, .25, .5, 1]))
    torch.testing.assert_close(apot_levels(2, True), torch.tensor([-1.0, 0.0, 1.0]))  # ternary
    torch.testing.assert_close(apot_levels(4, True)[7:].double(), apot_levels(3, False).double(), atol=1e-7, rtol=0)
    torch.testing.assert_close(apot_levels(3, False, "pot"), torch.tensor([0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, .25, .5, 1]))


def test_apot_levels_are_sums_of_the_papers_terms_for_even_widths():
    # Paper eq. 5 with k = 2, n = b/2: term i from {0, 2^-i, 2^-(i+n), 2^-(i+2n)}.
    for bits in (2, 4, 6):
        n = bits // 2
        terms = [[0.0] + [2.0 ** -(i + j * n) for j in range(3)] for i in range(n)]
        sums = sorted({sum(c) for c in itertools.product(*terms)})
        expected = torch.tensor(sums, dtype=torch.float64) / max(sums)
        torch.testing.assert_close(apot_levels(bits, False).double(), expected, atol=1e-7, rtol=0)


def test_projection_is_the_nearest_level():
    levels = apot_levels(4, True)
    x = torch.rand(5000) * 2.4 - 1.2
    brute = levels[(x[:, None] - levels[None, :]).abs().argmin(dim=1)]
    torch.testing.assert_close(project_to_levels(x.clamp(-1, 1), levels), brute)


@pytest.mark.parametrize("signed", [False, True])
def test_rcf_gradients_inside_and_outside(signed):
    levels = apot_levels(3, signed)
    lo = -1.0 if signed else 0.0
    alpha = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    v = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64).requires_grad_(True)
    out = RCFQuantize.apply(v, alpha, levels.double(), lo, 0.0)
    g = torch.randn(601, dtype=torch.float64)
    out.backward(g)
    u = v.detach() / 1.7
    proj = project_to_levels(u.clamp(lo, 1), levels.double())
    torch.testing.assert_close(out.detach(), 1.7 * proj)
    # RCF: ∂x̂/∂α = Π(u) − u inside; sign(x) above/below (0 below for unsigned).
    dalpha = torch.where((u >= lo) & (u <= 1), proj - u, torch.where(u > 1, 1.0, lo))
    torch.testing.assert_close(alpha.grad, (g * dalpha).sum())
    torch.testing.assert_close(v.grad, torch.where((u >= lo) & (u <= 1), g, 0.0))


def test_calibrated_gradient_passes_outside_for_weights_only():
    levels = apot_levels(2, True)
    v = torch.tensor([-5.0, 0.3, 5.0], requires_grad=True)
    RCFQuantize.apply(v, torch.tensor(1.0), levels, -1.0, 1.0).sum().backward()
    torch.testing.assert_close(v.grad, torch.ones(3))


def test_weight_normalisation_statistics():
    q = APoTQuantizer(4, signed=True, weight_norm=True, alpha_init=100.0, levels="uniform")
    w = torch.randn(64, 32, 3, 3) * 0.05 + 0.3
    seen = {}
    original = RCFQuantize.apply

    def spy(v, *args):
        seen["v"] = v
        return original(v, *args)

    RCFQuantize.apply = spy
    try:
        q(w)
    finally:
        RCFQuantize.apply = original
    assert seen["v"].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert seen["v"].std().item() == pytest.approx(1.0, abs=1e-5)


def test_max_scaled_edge_quantizer():
    q = MaxScaledQuantizer(8)
    w = torch.randn(100, requires_grad=True)
    out = q(w)
    step = w.detach().abs().max() / 127
    torch.testing.assert_close(out, torch.round(w.detach() / step) * step)
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(100))


def test_method_options():
    m = create_method({"name": "apot", "levels": "pot"})
    assert m.make_weight_quantizer(3).kind == "pot" and m.make_weight_quantizer(8).__class__ is MaxScaledQuantizer
    assert m.make_weight_quantizer(2).grad_outside == 1.0 and m.make_weight_quantizer(4).grad_outside == 0.0
    assert m.make_input_quantizer(8, True).kind == "uniform"
    with pytest.raises(ValueError, match="method.levels='lloyd' is not allowed"):
        create_method({"name": "apot", "levels": "lloyd"})
