"""Conv2d and Linear layers that quantize their weights and their input.

They subclass the float layers and share the float layer's Parameters, so state-dict keys stay
``<layer>.weight`` / ``<layer>.bias`` and the quantizers add ``<layer>.weight_quantizer.*`` and
``<layer>.input_quantizer.*``. A quantizer of ``None`` means that tensor stays in float.

Eval fast path: in eval mode without gradients a layer quantizes its weight once and reuses it
(:class:`QuantizedWeightCache`) until the weight, a tensor of its quantizer or one of the
quantizer's plain attributes changes, so evaluating a table cell quantizes each weight once.

The quantized weight keeps the float weight's strides (:func:`in_layout_of`): the memory format
the conv runs in follows them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qbench.quant.base import Quantizer


class QuantizedWeightCache:
    """The last quantized weight of a layer and what it was computed from: the quantizer, the
    weight and the quantizer's parameters and buffers (the objects themselves, held so that their
    memory cannot be reused by others, and the tensors' in-place version counters) and the
    quantizer's :meth:`~qbench.quant.base.Quantizer.cache_attributes`. Any in-place update (an
    optimiser step, ``load_state_dict``), replaced quantizer or tensor, or changed attribute
    makes it stale. A write through ``tensor.data`` bypasses the version counter (PyTorch's own
    hazard) and would go unseen; qbench makes none."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sources: tuple = ()
        self.versions: tuple[int, ...] = ()
        self.attributes: tuple | None = None
        self.value: torch.Tensor | None = None

    @staticmethod
    def _sources(weight: torch.Tensor, quantizer: Quantizer) -> tuple:
        return (quantizer, weight, *quantizer.parameters(), *quantizer.buffers())

    @staticmethod
    def _versions(sources: tuple) -> tuple[int, ...]:
        return tuple(t._version for t in sources[1:])

    def _fresh(self, sources: tuple, attributes: tuple) -> bool:
        return (self.value is not None and attributes == self.attributes and len(sources) == len(self.sources)
                and all(a is b for a, b in zip(sources, self.sources))
                and self._versions(sources) == self.versions)

    def quantize(self, weight: torch.Tensor, quantizer: Quantizer) -> torch.Tensor:
        """``quantizer(weight)``, computed again only when the cached value is stale."""
        attributes = quantizer.cache_attributes()
        if attributes is None:
            self.clear()
            return in_layout_of(quantizer(weight), weight)
        if self._fresh(self._sources(weight, quantizer), attributes):
            return self.value
        value = in_layout_of(quantizer(weight), weight)  # may update the quantizer's own state
        self.sources = self._sources(weight, quantizer)
        self.versions = self._versions(self.sources)
        self.attributes = quantizer.cache_attributes()
        self.value = value
        return value


def _take_over(quantized: nn.Module, layer: nn.Module, weight_quantizer: Quantizer | None,
               input_quantizer: Quantizer | None) -> None:
    """Share ``layer``'s parameters and attach the quantizers (``None``: that tensor stays float)."""
    quantized.weight = layer.weight
    quantized.bias = layer.bias
    quantized.weight_quantizer = nn.Identity() if weight_quantizer is None else weight_quantizer
    quantized.input_quantizer = nn.Identity() if input_quantizer is None else input_quantizer
    quantized.weight_cache = QuantizedWeightCache()
    quantized.input_fused = False  # set where the module before quantizes the input (qbench.quant.fused)


def quantized_input(layer: QuantConv2d | QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's input through its input quantizer, unless the module before it did that."""
    return x if layer.input_fused else layer.input_quantizer(x)


def in_layout_of(value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``value`` with ``weight``'s strides (a copy only where they differ). A weight with one input
    channel (ResNet18's stem on 1×28×28 images) has two sets of strides that are both contiguous;
    ``channels_last`` gives it (9, 1, 3, 1), but element-wise ops on it return (9, 9, 3, 1), and the
    conv then runs in NCHW and hands its output, in NCHW, to every layer up to the next conv
    (measured on ResNet18 APoT W4A4, whose 8-bit stem quantizer did this: a training step 164 →
    144 ms, an evaluation batch of 512 138 → 127 ms, once the weight keeps its strides)."""
    if value.stride() == weight.stride():
        return value
    return torch.empty_strided(weight.shape, weight.stride(), dtype=value.dtype, device=value.device).copy_(value)


def quantized_weight(layer: QuantConv2d | QuantLinear) -> torch.Tensor:
    """The layer's weight through its weight quantizer: from the cache in eval mode without
    gradients (outside ``torch.compile``), computed afresh otherwise."""
    quantizer = layer.weight_quantizer
    if not isinstance(quantizer, Quantizer):
        return quantizer(layer.weight)
    if layer.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
        layer.weight_cache.clear()
        return in_layout_of(quantizer(layer.weight), layer.weight)
    return layer.weight_cache.quantize(layer.weight, quantizer)


class QuantConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        _take_over(self, conv, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(quantized_input(self, x), quantized_weight(self), self.bias)


class QuantLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        _take_over(self, linear, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantized_input(self, x), quantized_weight(self), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
