"""APoT: Additive Powers-of-Two quantization (Li, Dong, Wang; ICLR 2020).

Every conv/linear layer but the edge layers gets an :class:`~qbench.quant.apot.APoTQuantizer`
on its weights (signed, weight normalisation, learned α from 3.0) and on its input (unsigned,
learned α from 8.0), then the network is fine-tuned from the float baseline with the shared
trainer. Edge layers follow the official code: weights at 8 bits by the current max |w|
(:class:`~qbench.quant.apot.MaxScaledQuantizer`, used for any weight of 7 or 8 bits); an input
quantizer of more than 6 bits, which the APoT level sets do not define, uses uniform levels
with a learned α.

Choices (fields of ``conf/method/apot.yaml``): ``levels`` (apot | pot | uniform, the ablation);
the α initial values (3.0 / 8.0 of the ICLR-era code; the later ImageNet code starts activations
at 6.0); ``weight_norm``; ``weight_grad_outside`` — ∂ŵ/∂w outside the clipping range, ``auto``
giving 1 for 2-bit weights (the official "calibrated gradient") and 0 above; ``act_signed``
for networks whose layer inputs go negative. α's own learning rate and weight decay are the
recipe's ``quantizer_lr_scale`` / ``quantizer_weight_decay``.

As in the official code, the quantized weights stay in normalised units (ŵ = α·Π(·), α in
units of σ), so every conv output is scaled by about 1/std(w) and the following batch norm
absorbs it: fine-tune with batch norm on batch statistics (``recipe.qat.freeze_bn=false``, e.g.
``recipe=local`` or ``local_short_bn``); frozen running statistics make the loss explode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qbench.methods.registry import Method, register_method
from qbench.quant.apot import APOT_TERMS, APoTQuantizer, LevelKind, MaxScaledQuantizer
from qbench.quant.base import Quantizer
from qbench.quant.convert import LayerPrecision
from qbench.validate import PositiveFloat

MAX_APOT_BITS = max(APOT_TERMS)  # widest level set defined (activations; weights: one more)
EDGE_BITS = 7  # weights of 7-8 bits (the edge layers) use the official max-scaled uniform grid


@register_method("apot", trains=True)
class APoT(Method):

    @dataclass
    class Config:
        levels: LevelKind = "apot"
        weight_alpha_init: PositiveFloat = 3.0
        act_alpha_init: PositiveFloat = 8.0
        weight_norm: bool = True
        weight_grad_outside: Literal["auto", 0, 1] = "auto"
        act_signed: bool = False

    def _grad_outside(self, bits: int) -> float:
        if self.config.weight_grad_outside == "auto":
            return 1.0 if bits == 2 else 0.0
        return float(self.config.weight_grad_outside)

    def weight_quantizer(self, layer: LayerPrecision) -> Quantizer:
        bits = layer.weight_bits
        if bits >= EDGE_BITS:
            return MaxScaledQuantizer(bits)
        c = self.config
        return APoTQuantizer(bits, signed=True, levels=c.levels, alpha_init=c.weight_alpha_init,
                             weight_norm=c.weight_norm, grad_outside=self._grad_outside(bits))

    def input_quantizer(self, layer: LayerPrecision) -> Quantizer:
        c = self.config
        signed = bool(layer.input_signed) or c.act_signed
        levels = "uniform" if layer.input_bits > MAX_APOT_BITS else c.levels
        return APoTQuantizer(layer.input_bits, signed=signed, levels=levels, alpha_init=c.act_alpha_init)
