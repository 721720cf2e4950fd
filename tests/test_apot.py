"""APoT levels, projection, RCF gradients and weight normalisation against the paper."""
import itertools

import pytest
import torch
from torch import nn

from qbench.engine import build_optimizer
from qbench.methods import create_method
from qbench.quant.apot import (
    APoTQuantizer,
    LevelTable,
    MaxScaledQuantizer,
    RCFQuantize,
    _project,
    apot_levels,
    project_to_levels,
)
from qbench.quant.convert import LayerPrecision, quantize_model
from qbench.run import qat_recipe
from qbench.validate import ConfigError


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


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("kind", ["apot", "pot", "uniform"])
def test_select_chain_and_lookup_table_projections_are_exact(bits, signed, kind):
    """Up to 32 levels a chain of selects, beyond them the lookup table (or bucketize)."""
    levels = apot_levels(bits, signed, kind)
    lo = -1.0 if signed else 0.0
    table = LevelTable.build(levels, lo)
    midpoints = (levels[1:] + levels[:-1]) / 2
    nudged = torch.cat([midpoints, torch.nextafter(midpoints, midpoints + 1), torch.nextafter(midpoints, midpoints - 1)])
    x = torch.cat([torch.linspace(lo, 1.0, 20001), levels, nudged]).clamp(lo, 1.0)
    projected = _project(x, torch.tensor(lo), table.levels, table.bounds, table.first, table.inv_cell)
    torch.testing.assert_close(projected, project_to_levels(x, levels), rtol=0, atol=0)
    if kind == "pot" and bits == 6:
        assert table.first is None  # levels down to 2^-30 and finer: the bucketize fallback


@pytest.mark.parametrize("signed", [False, True])
def test_rcf_gradients_inside_and_outside(signed):
    levels = apot_levels(3, signed)
    lo = -1.0 if signed else 0.0
    alpha = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    v = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64).requires_grad_(True)
    out = RCFQuantize.apply(v, alpha, LevelTable.build(levels.double(), lo), lo, 0.0)
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
    RCFQuantize.apply(v, torch.tensor(1.0), LevelTable.build(levels, -1.0), -1.0, 1.0).sum().backward()
    torch.testing.assert_close(v.grad, torch.ones(3))


def test_weight_normalisation_statistics():
    q = APoTQuantizer(4, signed=True, weight_norm=True, alpha_init=3.0)
    w = torch.randn(64, 32, 3, 3) * 0.05 + 0.3
    out = q(w.requires_grad_())
    flat, shift, inv_scale = out.grad_fn.saved_tensors[:3]  # the backward keeps v and the normalisation
    normalised = (flat - shift) * inv_scale
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalised.std().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bits, grad_outside", [(4, 0.0), (2, 1.0)])
def test_fused_weight_normalisation_matches_autograd_through_the_normalisation(bits, grad_outside):
    torch.manual_seed(0)
    levels = apot_levels(bits, signed=True)
    w = (torch.randn(32, 16, 3, 3) * 0.05 + 0.1).to(memory_format=torch.channels_last)
    upstream = torch.randn(w.shape)
    results = []
    for fused in (True, False):
        v = w.clone().requires_grad_()
        alpha = torch.tensor(2.0, requires_grad=True)
        if fused:
            out = RCFQuantize.apply(v, alpha, LevelTable.build(levels, -1.0), -1.0, grad_outside, True)
        else:
            out = RCFQuantize.apply((v - v.mean()) / v.std(), alpha, LevelTable.build(levels, -1.0), -1.0,
                                     grad_outside)
        (out * upstream).sum().backward()
        results.append((out.detach(), v.grad, alpha.grad))
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale,expected", [
    ("max", [-2.1, -0.3, 0.3, 0.9]),           # step max(w)/3 = 0.3: −2.0/0.3 rounds to −7, past −3
    ("max_abs", [-2.0, -2 / 3, 2 / 3, 2 / 3]),  # step max|w|/3 = 2/3
])
def test_max_scaled_edge_quantizer_by_hand(scale, expected):
    w = torch.tensor([-2.0, -0.4, 0.35, 0.9], requires_grad=True)
    out = MaxScaledQuantizer(3, scale)(w)
    torch.testing.assert_close(out, torch.tensor(expected))
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(4))


def test_edge_layers_use_the_configured_scale():
    def edge(options):
        return create_method({"name": "apot", **options}).weight_quantizer(LayerPrecision(8, None, role="first"))
    assert edge({}).scale == "max"
    assert edge({"edge_weight_scale": "max_abs"}).scale == "max_abs"


def optimizer_groups(cfg: dict) -> dict[str, dict]:
    """The param groups, by name, of a two-layer network quantized by the config's method and
    optimised with the run's fine-tuning recipe."""
    method = create_method(cfg["method"])
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    bits = cfg["wbits"]
    quantize_model(model, {"2": LayerPrecision(bits, bits)}, method.weight_quantizer, method.input_quantizer)
    return {g["name"]: g for g in build_optimizer(model, qat_recipe(cfg)).param_groups}


@pytest.mark.parametrize("options,bits,network_wd,alpha_wd,alpha_lr_scale", [
    ([], 2, 2e-5, 2e-5, 1.0),  # released logs: 2-bit wd 2e-5, α in the weights' group
    ([], 3, 1e-4, 1e-4, 1.0),  # 3 bits: the base 1e-4 (LSQ's rule in the recipe: 5e-5)
    (["method.alpha_weight_decay=1e-4", "method.alpha_lr_scale=0.1"], 2, 2e-5, 1e-4, 0.1),  # ICLR-era weight α
    (["method.weight_decay_2bit=null"], 2, 2.5e-5, 2.5e-5, 1.0),  # the recipe's (LSQ's) rule
])
def test_official_optimisation_reaches_the_optimizer(make_config, options, bits, network_wd, alpha_wd,
                                                     alpha_lr_scale):
    groups = optimizer_groups(make_config("method=apot", f"bits={bits}", "recipe.qat.quantizer_weight_decay=0.5",
                                          "recipe.qat.quantizer_lr_scale=3.0", *options))
    assert groups["network"]["weight_decay"] == pytest.approx(network_wd)
    assert len(groups["quantizers"]["params"]) == 2
    assert groups["quantizers"]["weight_decay"] == pytest.approx(alpha_wd)
    assert groups["quantizers"]["lr_scale"] == alpha_lr_scale


@pytest.mark.parametrize("field,value", [("edge_weight_scale", "min"), ("weight_decay_2bit", -1e-5),
                                         ("alpha_weight_decay", "1e-4"), ("alpha_lr_scale", 0.0)])
def test_a_bad_optimisation_or_edge_option_is_one_config_error(field, value):
    with pytest.raises(ConfigError, match=f"method.{field}=.* is not allowed for method apot"):
        create_method({"name": "apot", field: value})


def test_method_options():
    m = create_method({"name": "apot", "levels": "pot"})
    def weights(bits):
        return m.weight_quantizer(LayerPrecision(bits, 8))
    assert weights(3).kind == "pot" and weights(8).__class__ is MaxScaledQuantizer
    assert weights(2).grad_outside == 1.0 and weights(4).grad_outside == 0.0
    assert m.input_quantizer(LayerPrecision(4, 8, input_signed=True)).kind == "uniform"
    with pytest.raises(ValueError, match="method.levels='lloyd' is not allowed"):
        create_method({"name": "apot", "levels": "lloyd"})
