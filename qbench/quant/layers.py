"""Conv2d and Linear layers that quantize their weights and their input.

They subclass the float layers and share the float layer's Parameters, so state-dict keys stay
``<layer>.weight`` / ``<layer>.bias`` and the quantizers add ``<layer>.weight_quantizer.*`` and
``<layer>.input_quantizer.*``. A quantizer of ``None`` means that tensor stays in float.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from qbench.quant.base import Quantizer


def _take_over(quantized: nn.Module, layer: nn.Module, weight_quantizer: Quantizer | None,
               input_quantizer: Quantizer | None) -> None:
    """Share ``layer``'s parameters and attach the quantizers (``None``: that tensor stays float)."""
    quantized.weight = layer.weight
    quantized.bias = layer.bias
    quantized.weight_quantizer = nn.Identity() if weight_quantizer is None else weight_quantizer
    quantized.input_quantizer = nn.Identity() if input_quantizer is None else input_quantizer


class _Requantize(NamedTuple):
    """A saved quantized tensor, kept as its float source, the source's version and its quantizer."""

    quantizer: Quantizer
    source: torch.Tensor
    version: int


def _key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.shape, t.stride()


def _unpack(packed: object) -> torch.Tensor:
    if not isinstance(packed, _Requantize):
        return packed
    if packed.source._version != packed.version:
        raise RuntimeError("a quantized layer's input or weight was modified in place before the backward, "
                           "so its quantized value cannot be recomputed")
    with torch.no_grad():
        return packed.quantizer(packed.source)


def _recomputed(*quantized: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> Any:
    """Saved-tensor hooks under which the layer's operation keeps, for each (quantizer, float
    source, quantized value), the source instead of the quantized value: the backward quantizes
    the source again (the same kernel on the same values: the same tensor bit for bit) rather than
    keeping a second copy of every weight and input. The source is held anyway: the parameter, or
    the input the quantizer's own backward and often the ReLU before it keep. Only quantizers
    whose ``recomputable`` says their value is a pure function of source and parameters (no
    sampling, no state written while quantizing) and that observe nothing."""
    targets = {_key(q): _Requantize(quantizer, source, source._version) for quantizer, source, q in quantized
               if isinstance(quantizer, Quantizer) and quantizer.recomputable and quantizer.observer is None}
    if not targets or not torch.is_grad_enabled():
        return nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(lambda t: targets.get(_key(t), t), _unpack)


class QuantConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        _take_over(self, conv, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self.input_quantizer(x), self.weight_quantizer(self.weight)
        with _recomputed((self.input_quantizer, x, xq), (self.weight_quantizer, self.weight, wq)):
            return self._conv_forward(xq, wq, self.bias)


class QuantLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        _take_over(self, linear, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self.input_quantizer(x), self.weight_quantizer(self.weight)
        with _recomputed((self.input_quantizer, x, xq), (self.weight_quantizer, self.weight, wq)):
            return F.linear(xq, wq, self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
