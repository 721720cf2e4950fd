"""Attention Round (Diao, Li, Xu, Hao; arXiv 2207.03088, 2022) and its round-to-nearest baseline:
post-training quantization from the float network on a small calibration set
(``calib.num_images``; the paper uses 1,024 images, ``conf/experiment/attention_round_table``).

Both methods put every conv/linear layer's weights on a signed uniform grid with a step per
output channel (:func:`qbench.quant.attention_round.weight_step`) and quantize each layer's
input with a fixed range calibrated on the float network's activations (a
:class:`qbench.quant.lsq.LearnedStepQuantizer` set by min-max or by the clipping of least
rounding error, never trained). Neither is
fine-tuned by the shared trainer.

- ``ptq_nearest`` rounds every weight to its nearest level: the baseline that shows what the
  rounding rule adds on the same grid and the same calibration.
- ``attention_round`` lets each weight reach any level with the Gaussian attention of
  :mod:`qbench.quant.attention_round`, optimises the rounding offsets by output reconstruction
  unit by unit (:mod:`qbench.quant.reconstruct`) while the width σ anneals, then hard-quantizes.

``mixed_precision=true`` (either method) replaces the run's weight bits of the body layers
(the plan's role ``body``; the first and last layers keep their policy) by per-layer bits from
the lossy coding length of each layer's weights (:mod:`qbench.quant.mixed_precision`), with
``wbits`` as the parameter-weighted average budget.
The record then holds the chosen bits (``weight_bits_per_layer``, ``layer_precision``).

What the paper leaves open (papers.md §5.2) is chosen here, each a field of
``conf/method/attention_round.yaml``: the form of the attention and its read-out
(``relaxation``: expected level, or a sampled level with a straight-through gradient), the
learned variable (an offset δ on w/Δ, free to travel several levels), the σ schedule (geometric
from ``sigma_start`` to ``sigma_end`` in grid steps), the level ``window``, block- or
layer-wise reconstruction (``reconstruction``), the block input (``block_input``: the quantized
network's, as BRECQ), passes over the calibration set / batch size / learning rate per unit
(``epochs``: 6 passes of 1,024 images at batch 32 are 192 Adam steps per unit), the weight grid
(``weight_granularity``, ``weight_step_init``), the activation quantizer (``act_init``,
``act_signed``, ``calib_max_samples``), and the coding-length distortion, bit range and bits per
standard deviation of coding length (``mp_bits_per_std``) of mixed precision.

Phases: ``adjust_plan`` (mixed precision), ``initialize`` (weight grids from the weights,
activation ranges from the float network), ``finalize`` (the rounding, then every weight
hard-quantized).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from qbench.methods.registry import Method, RunFacts, input_signedness, register_method
from qbench.quant.attention_round import (
    AttentionRoundQuantizer,
    AttentionRoundRule,
    Granularity,
    GridInit,
    Relaxation,
    mse_step,
)
from qbench.quant.calibrate import input_quantizers, observe_inputs, quantized_layers, weight_quantizers
from qbench.quant.convert import LayerPrecision
from qbench.quant.lsq import LearnedStepQuantizer
from qbench.quant.mixed_precision import allocate_bits, bits_per_weight
from qbench.quant.observer import Observation
from qbench.quant.reconstruct import BlockInput, Reconstruction, Schedule, reconstruct
from qbench.validate import ActSigned, Bound, PositiveFloat, PositiveInt, require

MP_BITS = range(2, 9)  # bit-widths mixed precision may choose from


def body_layers(plan: dict[str, LayerPrecision]) -> list[str]:
    """The layers whose weights run at ``wbits`` by the policy (role ``body``)."""
    return [name for name, p in plan.items() if p.role == "body" and p.weight_bits]


@register_method("ptq_nearest", trains=False)
class PTQNearest(Method):

    @dataclass
    class Config:
        weight_granularity: Granularity = "channel"
        weight_step_init: GridInit = "mse"
        act_init: GridInit = "mse"
        act_signed: ActSigned = "auto"
        calib_max_samples: PositiveInt = 1 << 16
        mixed_precision: bool = False
        mp_min_bits: Annotated[int, Bound(MP_BITS.start)] = 2
        mp_max_bits: Annotated[int, Bound(MP_BITS.start)] = 8
        coding_distortion: PositiveFloat = 0.1
        mp_bits_per_std: PositiveFloat = 1.0

        def __post_init__(self) -> None:
            require(self.mp_min_bits <= self.mp_max_bits < MP_BITS.stop,
                    f"method.mp_min_bits={self.mp_min_bits}, method.mp_max_bits={self.mp_max_bits} "
                    f"are not allowed; use {MP_BITS.start} ≤ min ≤ max ≤ {MP_BITS.stop - 1}")

    def weight_quantizer(self, layer: LayerPrecision) -> AttentionRoundQuantizer:
        c = self.config
        return AttentionRoundQuantizer(layer.weight_bits, per_channel=c.weight_granularity == "channel",
                                       step_init=c.weight_step_init)

    def input_quantizer(self, layer: LayerPrecision) -> LearnedStepQuantizer:
        return LearnedStepQuantizer(layer.input_bits, signed=input_signedness(layer, self.config.act_signed),
                                    init="minmax", grad_scale=False)

    def coding_lengths(self, model: nn.Module, names: list[str]) -> dict[str, float]:
        """Bits per weight of each named layer's float weights at the configured distortion."""
        return {name: bits_per_weight(model.get_submodule(name).weight, self.config.coding_distortion)
                for name in names}

    def adjust_plan(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> dict[str, LayerPrecision]:
        """Mixed precision: coding-length bits for the body layers, their planned bits the
        parameter-weighted average budget."""
        c = self.config
        body = body_layers(plan)
        if not c.mixed_precision or not body:
            return plan
        budget = plan[body[0]].weight_bits
        sizes = {name: model.get_submodule(name).weight.numel() for name in body}
        bits = allocate_bits(self.coding_lengths(model, body), sizes, budget, c.mp_min_bits, c.mp_max_bits,
                             c.mp_bits_per_std)
        return {name: dataclasses.replace(p, weight_bits=bits[name]) if name in bits else p
                for name, p in plan.items()}

    def calibrate_input(self, quantizer: LearnedStepQuantizer, obs: Observation) -> None:
        """The input's range: min-max, then with ``act_init=mse`` the clipped step of least
        rounding error on the observed values (:func:`~qbench.quant.attention_round.mse_step`)."""
        quantizer.initialize(obs)
        if self.config.act_init == "mse":
            samples = obs.sample_tensor().view(1, -1)
            step = mse_step(samples, quantizer.step.detach().to(samples.device).view(1, 1), *quantizer.qrange)
            with torch.no_grad():
                quantizer.step.fill_(step.item())

    def initialize(self, model: nn.Module, batches: list[torch.Tensor], train_mode: bool) -> None:
        """Weight grids from the weights, input ranges from the float network (batch norm on
        running statistics: nothing trains)."""
        layers = quantized_layers(model)
        for name, q in weight_quantizers(model).items():
            q.fit(layers[name].weight)
        quantizers = input_quantizers(model)
        for name, obs in observe_inputs(model, batches, self.config.calib_max_samples).items():
            self.calibrate_input(quantizers[name], obs)

    def optimise_rounding(self, model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
        """Round-to-nearest: nothing to optimise."""
        return {}

    def finalize(self, model: nn.Module, batches: list[torch.Tensor]) -> dict:
        """The rounding (:meth:`optimise_rounding`), then every weight hard-quantized."""
        log = self.optimise_rounding(model, batches)
        for q in weight_quantizers(model).values():
            q.hard = True
        return log

    def report(self, model: nn.Module, facts: RunFacts) -> dict:
        """Per-layer weight bits as quantized, their parameter-weighted average over the body
        layers (the budget's layers), the number of calibration images, and with mixed
        precision each body layer's coding length in bits per weight."""
        layers = quantized_layers(model)
        bits = {name: q.bits for name, q in weight_quantizers(model).items()}
        sizes = {name: layers[name].weight.numel() for name in body_layers(facts.plan)}
        out = {
            "weight_bits_per_layer": bits,
            "average_weight_bits": sum(bits[n] * s for n, s in sizes.items()) / max(sum(sizes.values()), 1),
            "calibration_images": facts.calibration_images,
        }
        if self.config.mixed_precision:
            out["coding_length_bits_per_weight"] = self.coding_lengths(facts.fp_model, list(sizes))
        return out


@register_method("attention_round", trains=False)
class AttentionRound(PTQNearest):

    @dataclass
    class Config(PTQNearest.Config):
        reconstruction: Reconstruction = "block"
        block_input: BlockInput = "quantized"
        epochs: PositiveFloat = 6.0
        batch_size: PositiveInt = 32
        lr: PositiveFloat = 0.01
        sigma_start: PositiveFloat = 0.5
        sigma_end: PositiveFloat = 0.05
        window: PositiveInt | None = 3
        relaxation: Relaxation = "expected"

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.sigma_end <= self.sigma_start,
                    f"method.sigma_end={self.sigma_end} is not allowed; use at most "
                    f"method.sigma_start={self.sigma_start} (σ anneals down)")

    def weight_quantizer(self, layer: LayerPrecision) -> AttentionRoundQuantizer:
        c = self.config
        return AttentionRoundQuantizer(layer.weight_bits, per_channel=c.weight_granularity == "channel",
                                       step_init=c.weight_step_init, window=c.window,
                                       relaxation=c.relaxation)

    def optimise_rounding(self, model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
        """Block- (or layer-) wise reconstruction of the rounding (:mod:`qbench.quant.reconstruct`)."""
        c = self.config
        images = sum(len(x) for x in batches)
        schedule = Schedule(c.reconstruction, c.block_input, math.ceil(c.epochs * images / c.batch_size),
                            c.batch_size, c.lr)
        return reconstruct(model, batches, AttentionRoundRule(c.sigma_start, c.sigma_end), schedule)
