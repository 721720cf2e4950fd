"""Conv2d and Linear layers that quantize their weights and their input.

They subclass the float layers and share the float layer's Parameters, so state-dict keys stay
``<layer>.weight`` / ``<layer>.bias`` and the quantizers add ``<layer>.weight_quantizer.*`` and
``<layer>.input_quantizer.*``. A quantizer of ``None`` means that tensor stays in float.
"""
from __future__ import annotations

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


class QuantConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        _take_over(self, conv, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        _take_over(self, linear, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
