"""APoT: Additive Powers-of-Two quantization (Li, Dong, Wang; ICLR 2020).

Every conv/linear layer but the edge layers gets an :class:`~qbench.quant.apot.APoTQuantizer`
on its weights (signed, weight normalisation, learned α from 3.0) and on its input (unsigned,
learned α from 8.0), then the network is fine-tuned from the float baseline with the shared
trainer. Edge layers follow the official code: weights at 8 bits scaled by the current max(w)
(:class:`~qbench.quant.apot.MaxScaledQuantizer`, used for any weight of 7 or 8 bits); an input
quantizer of more than 6 bits, which the APoT level sets do not define, uses uniform levels
with a learned α.

Choices (fields of ``conf/method/apot.yaml``): ``levels`` (apot | pot | uniform, the ablation);
the α initial values (3.0 / 8.0 of the ICLR-era code; the later ImageNet code starts activations
at 6.0); ``weight_norm``; ``weight_grad_outside`` — ∂ŵ/∂w outside the clipping range, ``auto``
giving 1 for 2-bit weights (the official "calibrated gradient") and 0 above; ``act_signed``
for networks whose layer inputs go negative; ``edge_weight_scale`` — the edge layers' scale,
max(w) as the official ``first_conv`` / ``last_fc`` (default) or max|w|.

Optimisation (:meth:`APoT.adjust_recipe`; papers.md 3.5): the defaults follow the official
ImageNet code's released logs (May 2020, the code version whose calibrated gradient and 8-bit
edge layers we follow): weight decay 2e-5 for 2-bit weights (``weight_decay_2bit``) and the
recipe's base ``weight_decay`` (official 1e-4) at 3 bits and above — not LSQ's
``weight_decay_by_wbits`` rule of the shared recipes — and α in the weights' SGD group, with
their learning rate and weight decay (``alpha_lr_scale`` 1, ``alpha_weight_decay`` null). These
fields replace the recipe's ``quantizer_lr_scale`` / ``quantizer_weight_decay``. The ICLR-era
``main.py`` (3e5a986) gave α groups of their own — weight α lr 0.01 and wd 1e-4, activation α
lr 0.03 and wd 2e-5, at base lr 0.1 —: ``alpha_weight_decay=1e-4 alpha_lr_scale=0.1`` reaches
its weight-α group; the trainer has one group for every α, so its separate activation-α values
cannot be set. ``weight_decay_2bit=null`` restores the recipe's rule.

Progressive initialisation (papers.md 3.4, the official ImageNet runs: FP → 5 → 4 → 3 → 2 bits,
each started from the next-higher-bit checkpoint): ``progressive_from=B`` starts a run at B bits
from the float baseline and a run at b < B bits from the finished run of the same config at
b + 1 bits (weights, batch norm and every α), a chain a sweep over ``bits=5,4,3,2`` runs in order
(:meth:`APoT.predecessor`). Default null: every run starts from the float baseline.

As in the official code, the quantized weights stay in normalised units (ŵ = α·Π(·), α in
units of σ), so every conv output is scaled by about 1/std(w) and the following batch norm
absorbs it: fine-tune with batch norm on batch statistics (``recipe.qat.freeze_bn=false``, e.g.
``recipe=local`` or ``local_short_bn``); frozen running statistics make the loss explode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qbench.engine import weight_decay_for_bits
from qbench.methods.registry import Method, register_method
from qbench.quant.apot import APOT_TERMS, APoTQuantizer, EdgeScale, LevelKind, MaxScaledQuantizer
from qbench.quant.base import Quantizer
from qbench.quant.convert import LayerPrecision
from qbench.validate import NonNegativeFloat, PositiveFloat, PositiveInt

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
        edge_weight_scale: EdgeScale = "max"
        weight_decay_2bit: NonNegativeFloat | None = 2.0e-5
        alpha_weight_decay: NonNegativeFloat | None = None
        alpha_lr_scale: PositiveFloat = 1.0
        progressive_from: PositiveInt | None = None

    def _grad_outside(self, bits: int) -> float:
        if self.config.weight_grad_outside == "auto":
            return 1.0 if bits == 2 else 0.0
        return float(self.config.weight_grad_outside)

    def predecessor(self, cfg: dict) -> dict | None:
        """With ``progressive_from=B``: below B bits, the same config one bit wider (weights and
        activations), whose finished run this one starts from."""
        widest = self.config.progressive_from
        if widest is None or cfg["wbits"] >= widest:
            return None
        return {**cfg, "bits": cfg["bits"] + 1, "wbits": cfg["wbits"] + 1, "abits": cfg["abits"] + 1}

    def adjust_recipe(self, recipe: dict, wbits: int) -> dict:
        """The official optimisation (module docstring): APoT's weight decay by weight bits,
        then α's learning-rate scale and weight decay (null: the network's, as in one SGD
        group)."""
        c = self.config
        recipe = dict(recipe)
        if c.weight_decay_2bit is not None:
            recipe["weight_decay_by_wbits"] = {2: c.weight_decay_2bit}
        network = weight_decay_for_bits(recipe, wbits)
        recipe["quantizer_weight_decay"] = network if c.alpha_weight_decay is None else c.alpha_weight_decay
        recipe["quantizer_lr_scale"] = c.alpha_lr_scale
        return recipe

    def weight_quantizer(self, layer: LayerPrecision) -> Quantizer:
        bits = layer.weight_bits
        if bits >= EDGE_BITS:
            return MaxScaledQuantizer(bits, self.config.edge_weight_scale)
        c = self.config
        return APoTQuantizer(bits, signed=True, levels=c.levels, alpha_init=c.weight_alpha_init,
                             weight_norm=c.weight_norm, grad_outside=self._grad_outside(bits))

    def input_quantizer(self, layer: LayerPrecision) -> Quantizer:
        c = self.config
        signed = bool(layer.input_signed) or c.act_signed
        levels = "uniform" if layer.input_bits > MAX_APOT_BITS else c.levels
        return APoTQuantizer(layer.input_bits, signed=signed, levels=levels, alpha_init=c.act_alpha_init)
