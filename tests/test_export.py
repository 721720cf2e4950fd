"""qbench-export: requantisation, batch-norm folding, the integer reference against the
simulation, packed size, the int8 backend, and bad input (one line, exit 2, nothing written)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torchvision.models.resnet import BasicBlock

from qbench import phases
from qbench.export.fixed_point import quantize_multiplier, requantize
from qbench.export.fold import fold_batch_norm, skeleton
from qbench.export.integer import integer_reference, layer_forms
from qbench.export.size import model_size, packed_bytes
from qbench.methods import create_method
from qbench.quant.convert import EdgeLayerPolicy, plan_precision

METHODS = {"lsq": {"name": "lsq"}, "lsqplus": {"name": "lsqplus", "config": 4, "mse_grid": 8, "mse_steps": 20},
           "faq": {"name": "faq"}, "ptq_nearest": {"name": "ptq_nearest"}}
LOGIT_TOLERANCE = 1e-4  # relative to the largest logit: float32 rounding of the simulation's sums


def randomise_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    """Running statistics and affine parameters away from the identity, so folding is tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)


class Tiny(nn.Module):
    """A stem, one torchvision ResNet block (one ReLU module called twice) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.block = BasicBlock(8, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.relu(self.bn1(self.conv1(x))))), 1))


class TinySwish(nn.Module):
    """EfficientNet's layer pattern: timm's BatchNormAct2d (batch norm, dropout, activation in one
    module) after a stem, a depthwise and a pointwise conv; Swish, then ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv_pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn3 = BatchNormAct2d(8, act_layer=nn.ReLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn3(self.conv_pw(self.bn2(self.conv_dw(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


def quantized_tiny(method: str, bits: int, seed: int = 0, net: type[nn.Module] = Tiny) -> tuple[nn.Module, torch.Tensor]:
    """``net`` at W``bits``A``bits`` (first and last layer 8 bits), quantizers initialised and
    finalised on a random batch; and that batch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = net()
    randomise_batch_norm(model, gen)
    model.eval()
    m = create_method(METHODS[method])
    plan = plan_precision(model, bits, bits, "conv1", "fc", EdgeLayerPolicy(), EdgeLayerPolicy())
    model = phases.prepare(model, plan, m)
    x = torch.randn(256, 1, 12, 12, generator=gen)
    m.initialize(model, [x], False)
    m.finalize(model, [x])
    return model.eval(), x


@pytest.mark.parametrize("m", [1e-9, 3.3e-5, 0.0123, 0.5, 0.999999999, 1.7, -0.25, 123.456])
def test_fixed_point_multiplier_reproduces_the_scale_within_2_pow_minus_31(m):
    m0, shift = quantize_multiplier(m)
    assert 2**30 <= abs(m0) < 2**31
    assert abs(Fraction(m0, 2**shift) - Fraction(m)) <= abs(Fraction(m)) * Fraction(1, 2**31)


def test_requantize_is_round_half_up_of_the_exact_product():
    gen = torch.Generator().manual_seed(0)
    acc = torch.randint(-2**24, 2**24, (4096,), generator=gen, dtype=torch.int32)
    for m, c in [(0.0123, 0), (3.7e-4, 12345), (0.731, -999)]:
        m0, shift = quantize_multiplier(m)
        out = requantize(acc, torch.tensor(m0), torch.tensor(shift), torch.tensor(c))
        brute = [math.floor(Fraction(int(a) * m0 + c, 2**shift) + Fraction(1, 2)) for a in acc]
        assert out.tolist() == brute


def test_folding_batch_norm_leaves_float_outputs_unchanged():
    gen = torch.Generator().manual_seed(1)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
    randomise_batch_norm(bn, gen)
    bn.eval()
    x = torch.randn(4, 3, 9, 9, generator=gen)
    folded = fold_batch_norm(conv.bias, bn, 6)
    w = conv.weight.double() * folded.gain.view(-1, 1, 1, 1)
    out = nn.functional.conv2d(x.double(), w, folded.bias, padding=1)
    ref = bn(conv(x)).double()
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()  # float32 reference, float64 fold


def test_relu_module_called_twice_becomes_two_nodes():
    gm, folded = skeleton(quantized_tiny("lsq", 8)[0])
    relus = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.relu]
    assert len(relus) == 3 and not any(n.op == "call_module" and "relu" in n.target for n in gm.graph.nodes)
    assert folded["block.conv2"].bn == "block.bn2" and folded["fc"].bn is None


def test_batch_norm_with_its_activation_is_folded_and_the_activation_stays():
    gm, folded = skeleton(quantized_tiny("lsq", 8, net=TinySwish)[0])
    calls = [(n.op, n.target) for n in gm.graph.nodes if n.op in ("call_module", "call_function")]
    assert not any("batch_norm" in str(target) or target in ("bn1", "bn2", "bn3") for _, target in calls)
    assert [folded[name].bn for name in ("conv1", "conv_dw", "conv_pw")] == ["bn1", "bn2", "bn3"]
    assert ("call_module", "bn1.act") in calls and ("call_module", "bn2.act") in calls
    assert ("call_function", torch.relu) in calls  # bn3's ReLU, as every ReLU


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("method", list(METHODS))
def test_integer_reference_agrees_with_the_simulation(method, bits):
    model, x = quantized_tiny(method, bits)
    with torch.no_grad():
        ref, out = model(x), integer_reference(model, x)(x)
    assert (ref.argmax(1) == out.argmax(1)).all()
    assert (ref - out).abs().max() <= LOGIT_TOLERANCE * ref.abs().max()


def test_one_integer_conv_equals_the_simulated_conv():
    model, x = quantized_tiny("lsqplus", 4)
    integer = integer_reference(model, x)
    with torch.no_grad():
        ref = model.bn1(model.conv1(x))
        out = integer.conv1(x)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def pack(codes: torch.Tensor, bits: int) -> bytes:
    """Codes as two's-complement ``bits``-bit fields written back to back, padded to a byte."""
    stream = "".join(format(int(c) & ((1 << bits) - 1), f"0{bits}b") for c in codes.flatten())
    stream += "0" * (-len(stream) % 8)
    return int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b""


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_size_formula_matches_packing(bits):
    gen = torch.Generator().manual_seed(bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for count in (1, 7, 9, 1001):
        codes = torch.randint(lo, hi + 1, (count,), generator=gen)
        assert len(pack(codes, bits)) == packed_bytes(count, bits)


def test_model_size_counts_every_part_once():
    model, _ = quantized_tiny("lsq", 4)
    forms = layer_forms(model, skeleton(model)[1])
    size = model_size(model, forms)
    floats = sum(p.numel() for p in Tiny().state_dict().values() if p.is_floating_point())
    assert size["float32_bytes"] == 4 * floats
    weights = sum(packed_bytes(f.codes.numel(), f.weight_bits) for f in forms.values())
    assert size["parts"]["weights"] == weights and size["parts"]["float_rest"] == 0
    assert size["packed_bytes"] == sum(size["parts"].values())


def backend_and_reference(build: str, method: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the integer reference and of ``qbench.export.backend.<build>`` on a quantized tiny net."""
    pytest.importorskip("torchao", reason="torchao (pinned in pyproject) is not installed")
    from qbench.export import backend
    model, x = quantized_tiny(method, bits)
    with torch.no_grad():
        return integer_reference(model, x)(x), getattr(backend, build)(model, x)(x)


def test_int8_backend_agrees_with_the_integer_reference_at_w8a8():
    ref, out = backend_and_reference("int8_model", "lsq", 8)
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.999


def test_pt2e_reference_model_carries_the_grids_of_lsqplus():
    """Offsets (β shifted out, β·W·1 added back) and a 4-bit range survive torch.export →
    prepare_pt2e → convert_pt2e: the quantize/dequantize model agrees with the integer reference."""
    ref, out = backend_and_reference("converted_model", "lsqplus", 4)
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.999
    assert (ref - out).abs().max() <= 1e-2 * ref.abs().max()  # quantize ops multiply by 1/s: ties flip


def test_pt2e_reference_model_of_a_swish_network_agrees_with_the_simulation():
    """timm's BatchNormAct2d is folded before PT2E sees it (prepare_pt2e would fold it into
    weights whose per-channel scales were fixed without it), and the Swish stays."""
    pytest.importorskip("torchao", reason="torchao (pinned in pyproject) is not installed")
    from qbench.export.backend import converted_model
    model, x = quantized_tiny("lsqplus", 4, net=TinySwish)
    converted = converted_model(model, x)
    assert not [n for n in converted.graph.nodes if "batch_norm" in str(n.target)]
    with torch.no_grad():
        sim, ref, out = model(x), integer_reference(model, x)(x), converted(x)
    assert (sim - ref).abs().max() <= LOGIT_TOLERANCE * sim.abs().max()
    assert (sim.argmax(1) == out.argmax(1)).all()
    assert (sim - out).abs().max() <= 1e-3 * sim.abs().max()  # PT2E folding batch norm itself: 3.7e-3
