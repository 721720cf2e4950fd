"""AdaRound (Nagel et al., ICML 2020) as a post-training comparator of Attention Round, with
layer-wise reconstruction (the paper's) or block-wise (``reconstruction=block``: BRECQ, Li et al.,
ICLR 2021). The rounding is :mod:`qbench.quant.adaround`; the reconstruction loop is the one
Attention Round uses (:mod:`qbench.quant.reconstruct`), so the two differ in the rounding rule
only. Everything else is round-to-nearest's (:class:`~qbench.methods.attention_round.PTQNearest`):
the same weight grid (signed, a step per output channel chosen by ``weight_step_init``), the
same activation quantizers calibrated on the float network and then fixed, the same
calibration images (``calib.num_images``), and the same optional mixed precision.

The paper's defaults are the fields' defaults: 10,000 Adam steps per unit (``iterations``) at
learning rate 10⁻³ on batches of 32, λ = 0.01 (``reg_lambda``), β annealed from 20 to 2
(``beta_start``, ``beta_end``) after a warm-up of 20 % of the steps without the regulariser
(``warmup``). ``reg_lambda = 0`` is allowed: reconstruction without the regulariser.

Departures from the paper, each a choice of qbench:

- V₀ makes h(V₀) the fractional part of w/Δ (the paper does not say; :mod:`qbench.quant.adaround`).
- β decays linearly after the warm-up (the paper anneals it without giving the form).
- The grid is round-to-nearest's and Attention Round's (per-channel step, least rounding error),
  not a per-tensor one, so that the table compares rounding rules on one grid.
- A layer unit's loss is on the conv/linear output, before batch norm and the activation (the
  paper's eq. puts the activation function inside the norm); the block unit (BRECQ) includes them.
- The loss is the mean squared error plus λ·f_reg divided by the unit's output channels: the
  paper's squared error summed over channels plus λ·f_reg, divided by that constant
  (:mod:`qbench.quant.reconstruct`), so λ keeps the paper's balance.
- While a unit is optimised its input quantizers are on with their calibrated ranges, and its
  input is the quantized network's (``block_input``), as for Attention Round.
- The table (``conf/experiment/attention_round_table.yaml``, ``conf/ptq_row/adaround_*.yaml``)
  runs a CPU-sized number of steps for every AdaRound row alike; see those files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from qbench.methods.attention_round import PTQNearest
from qbench.methods.registry import register_method
from qbench.quant.adaround import AdaRoundQuantizer, AdaRoundRule
from qbench.quant.convert import LayerPrecision
from qbench.quant.reconstruct import BlockInput, Reconstruction, Schedule, reconstruct
from qbench.validate import Bound, NonNegativeFloat, PositiveFloat, PositiveInt, require


@register_method("adaround", trains=False)
class AdaRound(PTQNearest):

    @dataclass
    class Config(PTQNearest.Config):
        reconstruction: Reconstruction = "layer"
        block_input: BlockInput = "quantized"
        iterations: PositiveInt = 10_000
        batch_size: PositiveInt = 32
        lr: PositiveFloat = 0.001
        reg_lambda: NonNegativeFloat = 0.01
        beta_start: PositiveFloat = 20.0
        beta_end: PositiveFloat = 2.0
        warmup: Annotated[float, Bound(0)] = 0.2

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.beta_end <= self.beta_start,
                    f"method.beta_end={self.beta_end} is not allowed; use at most "
                    f"method.beta_start={self.beta_start} (β anneals down)")
            require(self.warmup < 1, f"method.warmup={self.warmup} is not allowed; use a fraction of the "
                                     "iterations from 0 to below 1")

    def weight_quantizer(self, layer: LayerPrecision) -> AdaRoundQuantizer:
        c = self.config
        return AdaRoundQuantizer(layer.weight_bits, per_channel=c.weight_granularity == "channel",
                                 step_init=c.weight_step_init)

    def optimise_rounding(self, model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
        """Layer- (or block-) wise reconstruction of the rounding (:mod:`qbench.quant.reconstruct`)."""
        c = self.config
        rule = AdaRoundRule(c.reg_lambda, c.beta_start, c.beta_end, c.warmup)
        schedule = Schedule(c.reconstruction, c.block_input, c.iterations, c.batch_size, c.lr)
        return reconstruct(model, batches, rule, schedule)
