"""A quantized layer hands its conv the weight in the float weight's layout, so that a channels_last
model runs channels_last throughout: ResNet18's stem (one input channel, a weight whose two sets of
strides are both contiguous) included, for every kind of weight quantizer, training, evaluating
through the cache and in a whole network."""
from collections.abc import Callable

import pytest
import torch
from torch import nn

from qbench.quant import LearnedStepQuantizer, Observation, QuantConv2d
from qbench.quant.adaround import AdaRoundQuantizer
from qbench.quant.apot import APoTQuantizer, MaxScaledQuantizer
from qbench.quant.attention_round import AttentionRoundQuantizer
from qbench.quant.faq import FixedPointQuantizer
from qbench.quant.layers import in_layout_of


def _fitted(quantizer) -> Callable[[torch.Tensor], nn.Module]:
    def make(weight: torch.Tensor) -> nn.Module:
        quantizer.fit(weight.detach())
        return quantizer
    return make


def _lsq(weight: torch.Tensor) -> nn.Module:
    q = LearnedStepQuantizer(4, signed=True)
    q.initialize(Observation.of(weight.detach()))
    return q


QUANTIZERS = {
    "lsq": _lsq,
    "apot": lambda w: APoTQuantizer(4, signed=True, weight_norm=True),
    "apot-edge-8bit": lambda w: MaxScaledQuantizer(8),
    "faq": lambda w: FixedPointQuantizer(4, True, "std", 2.5, power_of_two=False, track=True),
    "adaround": lambda w: _fitted(AdaRoundQuantizer(4))(w),
    "attention-round": lambda w: _fitted(AttentionRoundQuantizer(4))(w),
}


def _stem(name: str) -> QuantConv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    assert conv.weight.stride() == (9, 1, 3, 1)  # contiguous in both formats; channels_last's strides
    return QuantConv2d(conv, QUANTIZERS[name](conv.weight), None)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_a_one_channel_stem_runs_channels_last_training_and_evaluating(name):
    layer = _stem(name)
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    assert layer.train()(x).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):  # computed, then served from the cache
            assert layer.eval()(x).is_contiguous(memory_format=torch.channels_last)


def test_in_layout_of_copies_only_where_the_strides_differ_and_passes_the_gradient():
    weight = torch.empty_strided((16, 1, 3, 3), (9, 1, 3, 1)).copy_(torch.randn(16, 1, 3, 3))
    value = torch.randn(16, 1, 3, 3)  # the same shape in the other contiguous strides
    assert value.stride() != weight.stride()
    laid = in_layout_of(value, weight)
    assert laid.stride() == weight.stride() and torch.equal(laid, value)
    assert in_layout_of(weight, weight) is weight
    leaf = value.clone().requires_grad_(True)
    in_layout_of(leaf, weight).sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))


@pytest.mark.parametrize("method", ["apot", "lsq", "faq"])
def test_every_conv_of_a_channels_last_resnet18_outputs_channels_last(method, quantized_network):
    model, x = quantized_network("resnet18", method, 4)
    layouts = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(
                lambda mod, args, out, name=name: layouts.__setitem__(
                    name, out.is_contiguous(memory_format=torch.channels_last)))
    model.train()(x)
    assert layouts and all(layouts.values()), [n for n, ok in layouts.items() if not ok]
    layouts.clear()
    with torch.no_grad():
        model.eval()(x)
    assert layouts and all(layouts.values()), [n for n, ok in layouts.items() if not ok]
