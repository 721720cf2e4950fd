"""Conv2d and Linear layers that quantize their weights and their input.

They subclass the float layers and share the float layer's Parameters, so state-dict keys stay
``<layer>.weight`` / ``<layer>.bias`` and the quantizers add ``<layer>.weight_quantizer.*`` and
``<layer>.input_quantizer.*``. A quantizer of ``None`` means that tensor stays in float.

Eval fast path: in eval mode without gradients a layer quantizes its weight once and reuses it
(:class:`QuantizedWeightCache`) until the weight, a tensor of its quantizer or one of the
quantizer's plain attributes changes, so evaluating a table cell quantizes each weight once.

The quantized weight keeps the float weight's strides (:func:`in_layout_of`): the memory format
the conv runs in follows them.

Training with the native ops (``runtime.native_kernels``) and ``runtime.recompute_weights``: a
conv whose weight quantizer is LSQ / LSQ+ (zero or learned offset) keeps its float weight for the
backward instead of the quantized one (:class:`RecomputedWeightConv`). Autograd would keep
ŵ = Q(w), the conv's weight operand, from forward to backward for every layer: a second copy of
all conv weights for the whole step (ResNet18: 11 M floats, 45 MB), while w stays alive as the
parameter anyway. Recomputed from w in the backward (one pass over the weight), at most one
layer's ŵ and ∂L/∂ŵ exist at a time. The forward is ``conv2d(x̂, ŵ)``; the backward is ATen's
``convolution_backward`` with the arguments autograd gives it, then the quantizer's backward at
w: every value and gradient bit for bit that of the plain path (tests/test_native.py). Measured
on ResNet18 W4A4 at batch 128: peak heap over FP +62 → +29 MiB, and the step about 5 % slower
(the second weight pass and a Python autograd node per conv), so it is off by default.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qbench.quant import native
from qbench.quant.base import Quantizer
from qbench.quant.lsq import LearnedStepQuantizer

_recompute_weights = False


def recompute_weights(enabled: bool) -> None:
    """Switch :class:`RecomputedWeightConv` on or off (``runtime.recompute_weights``)."""
    global _recompute_weights
    _recompute_weights = enabled


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


def _quantized(weight: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, qmin: int,
               qmax: int) -> torch.Tensor:
    with torch.no_grad():
        return in_layout_of(native.learned_step_fake_quant(weight, step, offset, qmin, qmax, 1.0), weight)


class RecomputedWeightConv(torch.autograd.Function):
    """conv2d(x̂, Q(w)) with Q(w) computed again in the backward (module docstring); Q is the LSQ /
    LSQ+ quantizer of :func:`qbench.quant.native.learned_step_fake_quant`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, step: torch.Tensor,
                offset: torch.Tensor | None, qmin: int, qmax: int, grad_scale: float, stride: tuple,
                padding: tuple, dilation: tuple, groups: int) -> torch.Tensor:
        out = F.conv2d(x, _quantized(weight, step, offset, qmin, qmax), bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, step, offset)
        ctx.settings = (qmin, qmax, grad_scale, stride, padding, dilation, groups,
                        None if bias is None else list(bias.shape))
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight, step, offset = ctx.saved_tensors
        qmin, qmax, grad_scale, stride, padding, dilation, groups, bias_sizes = ctx.settings
        mask = [ctx.needs_input_grad[0], True, bias_sizes is not None and ctx.needs_input_grad[2]]
        grad_x, grad_w_hat, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, x, _quantized(weight, step, offset, qmin, qmax), bias_sizes, list(stride), list(padding),
            list(dilation), False, [0] * len(stride), groups, mask)
        grad_w, grad_step, grad_offset = native.learned_step_fake_quant_backward(weight, grad_w_hat, step, offset,
                                                                                 qmin, qmax, grad_scale)
        return (grad_x, grad_w, grad_bias, grad_step, grad_offset if ctx.needs_input_grad[4] else None,
                None, None, None, None, None, None, None)


def recomputes_weight(conv: nn.Conv2d, quantizer: nn.Module) -> bool:
    """Whether ``conv`` (a quantized conv with weight quantizer ``quantizer``) runs
    :class:`RecomputedWeightConv` in this call."""
    return (_recompute_weights and torch.is_grad_enabled() and conv.weight.requires_grad
            and native.applies(conv.weight)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and isinstance(quantizer, LearnedStepQuantizer) and quantizer.has_fixed_grid())


def conv_recomputing_weight(conv: nn.Conv2d, x: torch.Tensor, quantizer: LearnedStepQuantizer) -> torch.Tensor:
    """``conv``'s output for its quantized input ``x`` through :class:`RecomputedWeightConv`."""
    return RecomputedWeightConv.apply(x, conv.weight, conv.bias, quantizer.step, quantizer.offset, *quantizer.qrange,
                                      quantizer.grad_scale(conv.weight), conv.stride, conv.padding, conv.dilation,
                                      conv.groups)


class QuantConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        _take_over(self, conv, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantized_input(self, x)
        if recomputes_weight(self, self.weight_quantizer):
            self.weight_cache.clear()
            return conv_recomputing_weight(self, x, self.weight_quantizer)
        return self._conv_forward(x, quantized_weight(self), self.bias)


class QuantLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, weight_quantizer: Quantizer | None,
                 input_quantizer: Quantizer | None) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        _take_over(self, linear, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantized_input(self, x), quantized_weight(self), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
