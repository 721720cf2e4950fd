"""The eval fast path: a quantized layer in eval mode without gradients quantizes its weight once
and reuses it, and quantizes it again whenever anything it came from changes."""
import copy

import pytest
import torch
from torch import nn

from qbench.quant import LearnedStepQuantizer, Observation, QuantConv2d, QuantLinear
from qbench.quant.apot import APoTQuantizer
from qbench.quant.attention_round import AttentionRoundQuantizer
from qbench.quant.faq import FixedPointQuantizer


class Counting:
    """Counts the calls of a quantizer's ``quantize``."""

    def __init__(self, quantizer) -> None:
        self.calls = 0
        inner = quantizer.quantize

        def quantize(v):
            self.calls += 1
            return inner(v)
        quantizer.quantize = quantize


def _lsq(weight: torch.Tensor) -> LearnedStepQuantizer:
    q = LearnedStepQuantizer(4, signed=True, offset="learned")
    q.initialize(Observation.of(weight))
    return q


QUANTIZERS = {
    "lsqplus": _lsq,
    "faq-tracked-std": lambda w: FixedPointQuantizer(4, True, "std", 2.5, power_of_two=False, track=True),
    "apot": lambda w: APoTQuantizer(4, signed=True, weight_norm=True),
}


def _layer(make, linear: bool = False):
    torch.manual_seed(0)
    float_layer = nn.Linear(16, 8) if linear else nn.Conv2d(3, 8, 3)
    quantizer = make(float_layer.weight)
    layer = (QuantLinear if linear else QuantConv2d)(float_layer, quantizer, None)
    return layer.eval(), quantizer


def _input(linear: bool = False) -> torch.Tensor:
    return torch.randn(4, 16) if linear else torch.randn(4, 3, 9, 9)


@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
@pytest.mark.parametrize("name", QUANTIZERS)
def test_eval_without_gradients_quantizes_each_weight_once_and_gives_the_same_output(name, linear):
    layer, quantizer = _layer(QUANTIZERS[name], linear)
    x = _input(linear)
    with torch.enable_grad():
        expected = layer(x).detach()
    counter = Counting(quantizer)
    with torch.no_grad():
        outputs = [layer(x) for _ in range(3)]
    assert counter.calls == 1
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_an_optimiser_step_makes_the_cached_weight_stale(name):
    layer, _ = _layer(QUANTIZERS[name])
    x = _input()
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(2):
        with torch.no_grad():
            before = layer(x)
        layer.train()
        optimiser.zero_grad()
        layer(x).square().mean().backward()
        optimiser.step()
        layer.eval()
        with torch.no_grad():
            after = layer(x)
        with torch.enable_grad():
            fresh = layer(x).detach()
        torch.testing.assert_close(after, fresh, rtol=0, atol=0)
        assert not torch.equal(before, after)


def test_load_state_dict_and_a_changed_attribute_make_the_cached_weight_stale():
    layer, quantizer = _layer(_lsq)
    x = _input()
    counter = Counting(quantizer)
    with torch.no_grad():
        layer(x)
        state = copy.deepcopy(layer.state_dict())
        state["weight"] = state["weight"] * 2
        layer.load_state_dict(state)
        doubled = layer(x)
        assert counter.calls == 2
        quantizer.bits = 2
        two_bit = layer(x)
        assert counter.calls == 3
    with torch.enable_grad():
        torch.testing.assert_close(two_bit, layer(x).detach(), rtol=0, atol=0)
    assert not torch.equal(doubled, two_bit)


def test_a_replaced_quantizer_is_not_served_the_old_quantizers_weight():
    layer, _ = _layer(_lsq)
    x = _input()
    with torch.no_grad():
        layer(x)
        replacement = _lsq(layer.weight)
        replacement.step.data.fill_(0.5)
        layer.weight_quantizer = replacement
        out = layer(x)
    with torch.enable_grad():
        torch.testing.assert_close(out, layer(x).detach(), rtol=0, atol=0)


def test_training_mode_gradients_and_random_weights_are_never_cached():
    layer, quantizer = _layer(_lsq)
    x = _input()
    counter = Counting(quantizer)
    layer.train()
    with torch.no_grad():
        layer(x), layer(x)
    layer.eval()
    layer(x), layer(x)  # gradients enabled
    assert counter.calls == 4 and layer.weight_cache.value is None

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    sampled = AttentionRoundQuantizer(2, relaxation="sample")
    sampled.fit(conv.weight)
    sampled.offset.data.fill_(0.3)
    layer = QuantConv2d(conv, sampled, None).eval()
    with torch.no_grad():
        draws = [layer(x) for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    sampled.hard = True
    counter = Counting(sampled)
    with torch.no_grad():
        layer(x), layer(x)
    assert counter.calls == 1


def test_an_observed_weight_is_quantized_at_every_call():
    layer, quantizer = _layer(_lsq)
    quantizer.observer = Observation()
    with torch.no_grad():
        layer(_input()), layer(_input())
    assert quantizer.observer.count == 2 * layer.weight.numel()
