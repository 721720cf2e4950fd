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
from typing import Iterable

import torch
from torch import nn

from qbench.methods.registry import Method, register_method
from qbench.quant.apot import APOT_TERMS, LEVEL_KINDS, APoTQuantizer, MaxScaledQuantizer
from qbench.quant.base import Quantizer
from qbench.quant.calibrate import initialize_quantizers
from qbench.quant.convert import LayerPrecision, quantize_model

MAX_APOT_BITS = max(APOT_TERMS)  # widest level set defined (activations; weights: one more)
EDGE_BITS = 7  # weights of 7-8 bits (the edge layers) use the official max-scaled uniform grid


@register_method("apot")
class APoT(Method):
    trains = True

    @dataclass
    class Config:
        levels: str = "apot"
        weight_alpha_init: float = 3.0
        act_alpha_init: float = 8.0
        weight_norm: bool = True
        weight_grad_outside: str = "auto"
        act_signed: bool = False

        def __post_init__(self) -> None:
            if self.levels not in LEVEL_KINDS:
                raise ValueError(f"method.levels={self.levels!r} is not allowed; use {', '.join(LEVEL_KINDS)}")
            if str(self.weight_grad_outside) not in ("auto", "0", "1", "0.0", "1.0"):
                raise ValueError(f"method.weight_grad_outside={self.weight_grad_outside!r} is not allowed; use auto, 0 or 1")

    def _grad_outside(self, bits: int) -> float:
        if str(self.config.weight_grad_outside) == "auto":
            return 1.0 if bits == 2 else 0.0
        return float(self.config.weight_grad_outside)

    def make_weight_quantizer(self, bits: int) -> Quantizer:
        if bits >= EDGE_BITS:
            return MaxScaledQuantizer(bits)
        c = self.config
        return APoTQuantizer(bits, signed=True, levels=c.levels, alpha_init=c.weight_alpha_init,
                             weight_norm=c.weight_norm, grad_outside=self._grad_outside(bits))

    def make_input_quantizer(self, bits: int, signed: bool | None) -> Quantizer:
        c = self.config
        signed = c.act_signed if signed is None else signed
        if bits > MAX_APOT_BITS:
            return APoTQuantizer(bits, signed=signed, levels="uniform", alpha_init=c.act_alpha_init)
        return APoTQuantizer(bits, signed=signed, levels=c.levels, alpha_init=c.act_alpha_init)

    def prepare(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> nn.Module:
        return quantize_model(model, plan, self.make_weight_quantizer, self.make_input_quantizer)

    def calibrate(self, model: nn.Module, batches: Iterable[torch.Tensor], train_mode: bool = False) -> dict:
        return initialize_quantizers(model, batches, train_mode=train_mode)
