"""What QAT keeps for the backward. Quantized layers keep the float input and weight and quantize
them again there, for quantizers whose value is a pure function of source and parameters: the
gradients are the same bit for bit, and the quantized copies are freed after the forward. The LSQ
and APoT functions keep their input itself, no float tensor of its size."""
import copy
import weakref
from collections.abc import Callable

import pytest
import torch

from qbench.quant import LearnedStepFakeQuant, LearnedStepQuantizer, Observation, QuantConv2d, QuantLinear
from qbench.quant.apot import APoTQuantizer, LevelTable, RCFQuantize, apot_levels
from qbench.quant.attention_round import AttentionRoundQuantizer
from qbench.quant.faq import FixedPointQuantizer


def lsq(bits, signed, values, offset="zero"):
    q = LearnedStepQuantizer(bits, signed, offset=offset)
    q.initialize(Observation.of(values))
    return q


def conv_layer(input_quantizer=None, weight_quantizer=None):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(5, 4, 8, 8).relu()
    return QuantConv2d(conv, weight_quantizer or lsq(3, True, conv.weight.detach()),
                       input_quantizer or lsq(2, False, x)), x


def gradients(layer, x):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return [out.detach(), x.grad] + [p.grad for p in layer.parameters()]


def not_recomputed(layer):
    copied = copy.deepcopy(layer)
    copied.input_quantizer.recomputable = copied.weight_quantizer.recomputable = False
    return copied


@pytest.mark.parametrize("offset", ["zero", "learned"])
def test_recomputing_gives_the_same_output_and_gradients_bit_for_bit(offset):
    layer, x = conv_layer()
    layer.input_quantizer = lsq(2, False, x, offset)
    assert layer.input_quantizer.recomputable and layer.weight_quantizer.recomputable
    for got, want in zip(gradients(layer, x), gradients(not_recomputed(layer), x), strict=True):
        assert torch.equal(got, want)


def test_a_linear_layer_recomputes_too():
    linear = torch.nn.Linear(12, 3)
    x = torch.randn(7, 12)
    layer = QuantLinear(linear, lsq(4, True, linear.weight.detach()), lsq(4, True, x))
    for got, want in zip(gradients(layer, x), gradients(not_recomputed(layer), x), strict=True):
        assert torch.equal(got, want)


def quantized_copies_alive(layer, x):
    """Whether the quantized input and weight outlive the forward (held for the backward)."""
    refs = []
    hooks = [q.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out)))
             for q in (layer.input_quantizer, layer.weight_quantizer)]
    out = layer(x.clone().requires_grad_(True))
    for h in hooks:
        h.remove()
    alive = [r() is not None for r in refs]
    out.sum().backward()
    return alive


def test_the_quantized_copies_are_freed_after_the_forward():
    layer, x = conv_layer()
    assert quantized_copies_alive(layer, x) == [False, False]
    assert quantized_copies_alive(not_recomputed(layer), x) == [True, True]


@pytest.mark.parametrize("make", [
    lambda x: LearnedStepQuantizer(2, False, offset="xmin"),  # writes its running minimum
    lambda x: FixedPointQuantizer(4, False, "max", track=True),  # writes its step from every input
    lambda x: AttentionRoundQuantizer(4),  # samples its rounding
])
def test_quantizers_that_write_state_or_sample_are_never_recomputed(make):
    layer, x = conv_layer()
    assert not make(layer.weight).recomputable


def test_apot_and_faq_with_a_fixed_range_are_recomputed():
    assert APoTQuantizer(4, signed=False).recomputable
    assert FixedPointQuantizer(4, False, "max").recomputable


def test_an_observing_quantizer_keeps_its_output():
    layer, x = conv_layer()
    layer.input_quantizer.observer = Observation()
    assert quantized_copies_alive(layer, x) == [True, False]


def test_changing_the_input_in_place_before_the_backward_is_an_error():
    layer, x = conv_layer()
    x = x.clone().requires_grad_(True)
    h = x * 1.0
    out = layer(h)
    h.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified"):
        out.sum().backward()


def _saved_storages(fn: Callable[[], torch.Tensor]) -> list[int]:
    """The storage pointers of the float tensors of more than one element autograd saves while ``fn`` runs."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.numel() > 1:
            saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("quantize", [
    lambda v: LearnedStepFakeQuant.apply(v, torch.tensor(0.3, requires_grad=True), None, -4, 3, 1.0),
    lambda v: LearnedStepFakeQuant.apply(v, torch.tensor(0.3, requires_grad=True),
                                         torch.tensor(-0.1, requires_grad=True), -4, 3, 1.0),
    lambda v: RCFQuantize.apply(v, torch.tensor(1.5, requires_grad=True),
                                LevelTable.build(apot_levels(4, False), 0.0), 0.0, 0.0, False),
    lambda v: RCFQuantize.apply(v, torch.tensor(3.0, requires_grad=True),
                                LevelTable.build(apot_levels(4, True), -1.0), -1.0, 0.0, True),
], ids=["lsq", "lsqplus", "apot", "apot-weight-norm"])
def test_the_backward_keeps_the_input_itself_and_no_float_tensor_of_its_size(quantize):
    v = torch.randn(8, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert set(_saved_storages(lambda: quantize(v))) == {v.untyped_storage().data_ptr()}
