"""One conv/linear layer in integer arithmetic (Jacob et al., CVPR 2018, section 2).

With x̂ = s_x·q + β on the input (β = 0 except LSQ+), Ŵ = s_w·q_w on the weights and the batch
norm after the layer folded into a per-channel gain g and bias b' (:mod:`qbench.export.fold`),

    g·(Ŵ ∗ x̂) + b' = S·(q_w ∗ q + (β/s_x)·(q_w ∗ 1) + b'/S),    S = s_x·s_w·g          (eq. 4, 7)

The integer part is the int32 accumulator acc = q_w ∗ q (zero padding: padded positions add
nothing, as the simulation pads x̂ with 0). The rest is the real bias B = b' + S·(β/s_x)·(q_w ∗ 1):
for LSQ+ the offset term β·W·1, counted only where the kernel covers the input (a map). B enters
at the requantisation multiplier's precision (2^−shift), not as an int32 at the accumulator's
scale as in section 2.4: a bias rounded to the accumulator's unit moves the result by up to half
a unit and flips codes that sit near a rounding tie, which the simulation does not. The result goes on:

- to the next layer's input grid, when the layer feeds that layer directly (through a ReLU or
  nothing): q' = clamp(⌊M·acc + (B − β')/s'⌉, lo, p') with M = S/s' as an int32 multiplier and a right
  shift (eq. 5-6, :mod:`qbench.export.fixed_point`); a ReLU is the lower clamp lo = ⌊−β'/s'⌉,
  the code of 0 (Jacob's fused activation); the next layer then takes q' as is;
- else out as the real value S·acc + B (the residual adds, pools and logits, which qbench's
  simulation computes in float too).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qbench.export.affine import Affine
from qbench.export.fixed_point import multipliers, requantize


class IntegerLayer(nn.Module):
    """Conv2d or Linear in integer arithmetic (module docstring).

    Args:
        layer: the float layer (its geometry: stride, padding, dilation, groups).
        codes: the weight codes q_w (int8, the layer's weight shape).
        weight_scale: s_w per output channel.
        input_form: the input grid (s_x, β, n, p).
        folded: (g, b') per output channel.
        input_shape: the shape of one input example, for the offset term's map.
        output_form: the next layer's input grid, or ``None`` to return real values.
        relu: a ReLU sits between this layer and the next one (with ``output_form``).
        takes_codes: the input arrives as codes from the previous integer layer.
    """

    def __init__(self, layer: nn.Module, codes: torch.Tensor, weight_scale: torch.Tensor, input_form: Affine,
                 gain: torch.Tensor, bias: torch.Tensor, input_shape: tuple[int, ...],
                 output_form: Affine | None = None, relu: bool = False, takes_codes: bool = False) -> None:
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv and layer.padding_mode != "zeros":
            raise ValueError(f"padding mode {layer.padding_mode!r} has no integer form here")
        self.geometry = (layer.stride, layer.padding, layer.dilation, layer.groups) if self.conv else None
        self.input_form, self.takes_codes = input_form, takes_codes
        channels = codes.shape[0]
        self.view = (1, channels, 1, 1) if self.conv else (1, channels)
        self.register_buffer("weight", codes.to(torch.int8))
        scale = float(input_form.scale) * weight_scale.double() * gain.double()
        self.register_buffer("acc_scale", scale.view(self.view))
        real_bias = bias.double().view(self.view)
        if input_form.offset:
            coverage = self.accumulate(torch.ones((1, *input_shape), dtype=torch.int32)).double()
            real_bias = real_bias + input_form.offset / float(input_form.scale) * coverage * self.acc_scale
        self.register_buffer("real_bias", real_bias)
        self.output_form = output_form
        if output_form is not None:
            out_scale, out_offset = float(output_form.scale), output_form.offset
            m0, shift = multipliers(scale / out_scale)
            self.register_buffer("m0", m0.view(self.view))
            self.register_buffer("shift", shift.view(self.view))
            constant = torch.round((real_bias - out_offset) / out_scale * torch.exp2(self.shift.double()))
            self.register_buffer("constant", constant.to(torch.int64))
            zero_code = math.floor(-out_offset / out_scale + 0.5)
            self.low = max(output_form.qmin, zero_code) if relu else output_form.qmin
            self.high = output_form.qmax

    def accumulate(self, q: torch.Tensor) -> torch.Tensor:
        """q_w ∗ q in int32."""
        weight = self.weight.to(torch.int32)
        if self.conv:
            stride, padding, dilation, groups = self.geometry
            return F.conv2d(q, weight, None, stride, padding, dilation, groups)
        return F.linear(q, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x if self.takes_codes else self.input_form.codes(x)
        acc = self.accumulate(q)
        if self.output_form is None:
            return (acc.double() * self.acc_scale + self.real_bias).float()
        return requantize(acc, self.m0, self.shift, self.constant).clamp(self.low, self.high).to(torch.int32)
