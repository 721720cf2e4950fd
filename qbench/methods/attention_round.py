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

``mixed_precision=true`` (either method) replaces the run's weight bits of the body layers —
those at the plan's most common weight bit-width, ``wbits``; edge layers keep their policy —
by per-layer bits from the lossy coding length of each layer's weights
(:mod:`qbench.quant.mixed_precision`), with ``wbits`` as the parameter-weighted average budget.
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
``act_signed``), and the coding-length distortion, bit range and bits per standard deviation of coding length
(``mp_bits_per_std``) of mixed precision.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Iterable

import torch
from torch import nn

from qbench.methods.lsq import parse_signedness
from qbench.methods.registry import Method, register_method
from qbench.quant.attention_round import (GRANULARITIES, RELAXATIONS, STEP_INITS, AttentionRoundQuantizer,
                                          mse_step)
from qbench.quant.calibrate import input_quantizers, observe_inputs, quantized_layers, weight_quantizers
from qbench.quant.convert import LayerPrecision, quantize_model
from qbench.quant.lsq import LearnedStepQuantizer
from qbench.quant.mixed_precision import allocate_bits, bits_per_weight
from qbench.quant.observer import Observation
from qbench.quant.reconstruct import GRANULARITIES as RECONSTRUCTIONS
from qbench.quant.reconstruct import optimise_unit, reconstruct

ACT_INITS = ("mse", "minmax")
BLOCK_INPUTS = ("quantized", "float")


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; use {', '.join(allowed)}")


def _positive(field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{field}={value!r} is not allowed; use a number > 0")


@register_method("ptq_nearest")
class PTQNearest(Method):
    trains = False

    @dataclass
    class Config:
        weight_granularity: str = "channel"
        weight_step_init: str = "mse"
        act_init: str = "mse"
        act_signed: str = "auto"
        act_calib_max_samples: int = 1 << 16
        mixed_precision: bool = False
        mp_min_bits: int = 2
        mp_max_bits: int = 8
        coding_distortion: float = 0.1
        mp_bits_per_std: float = 1.0

        def __post_init__(self) -> None:
            _choice("method.weight_granularity", self.weight_granularity, GRANULARITIES)
            _choice("method.weight_step_init", self.weight_step_init, STEP_INITS)
            _choice("method.act_init", self.act_init, ACT_INITS)
            parse_signedness(self.act_signed, "method.act_signed")
            _positive("method.act_calib_max_samples", self.act_calib_max_samples)
            _positive("method.coding_distortion", self.coding_distortion)
            _positive("method.mp_bits_per_std", self.mp_bits_per_std)
            if not 2 <= self.mp_min_bits <= self.mp_max_bits <= 8:
                raise ValueError(f"method.mp_min_bits={self.mp_min_bits}, method.mp_max_bits="
                                 f"{self.mp_max_bits} are not allowed; use 2 ≤ min ≤ max ≤ 8")

    def __init__(self, config: object) -> None:
        super().__init__(config)
        self.plan: dict[str, LayerPrecision] = {}
        self.body: list[str] = []
        self.coding_lengths: dict[str, float] = {}
        self.calibration_images = 0

    def make_weight_quantizer(self, bits: int) -> AttentionRoundQuantizer:
        c = self.config
        return AttentionRoundQuantizer(bits, per_channel=c.weight_granularity == "channel",
                                       step_init=c.weight_step_init)

    def make_input_quantizer(self, bits: int, signed: bool | None) -> LearnedStepQuantizer:
        if signed is None:
            signed = parse_signedness(self.config.act_signed, "method.act_signed")
        return LearnedStepQuantizer(bits, signed=signed, init="minmax", grad_scale=False)

    def calibrate_input(self, quantizer: LearnedStepQuantizer, obs: Observation) -> None:
        """The input's range: min-max, then with ``act_init=mse`` the clipped step of least
        rounding error on the observed values (:func:`~qbench.quant.attention_round.mse_step`)."""
        quantizer.initialize(obs)
        if self.config.act_init == "mse":
            samples = obs.sample_tensor().view(1, -1)
            step = mse_step(samples, quantizer.step.detach().to(samples.device).view(1, 1), *quantizer.qrange)
            with torch.no_grad():
                quantizer.step.fill_(step.item())

    def allocate(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> dict[str, LayerPrecision]:
        """Mixed precision: coding-length bits for the body layers, budget = their planned bits."""
        c = self.config
        budget = Counter(p.weight_bits for p in plan.values() if p.weight_bits).most_common(1)[0][0]
        weights = {name: model.get_submodule(name).weight for name in self.body}
        self.coding_lengths = {name: bits_per_weight(w, c.coding_distortion) for name, w in weights.items()}
        bits = allocate_bits(self.coding_lengths, {n: w.numel() for n, w in weights.items()},
                             budget, c.mp_min_bits, c.mp_max_bits, c.mp_bits_per_std)
        return {name: dataclasses.replace(p, weight_bits=bits[name]) if name in bits else p
                for name, p in plan.items()}

    def prepare(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> nn.Module:
        counts = Counter(p.weight_bits for p in plan.values() if p.weight_bits)
        body_bits = counts.most_common(1)[0][0] if counts else None
        self.body = [name for name, p in plan.items() if p.weight_bits == body_bits]
        self.plan = self.allocate(model, plan) if self.config.mixed_precision else plan
        return quantize_model(model, self.plan, self.make_weight_quantizer, self.make_input_quantizer)

    def optimise_rounding(self, model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
        """Round-to-nearest: nothing to optimise."""
        return {}

    def calibrate(self, model: nn.Module, batches: Iterable[torch.Tensor], train_mode: bool = False) -> dict:
        """The whole PTQ: weight grids, activation ranges from the float network, the rounding
        (:meth:`optimise_rounding`), then every weight hard-quantized."""
        batches = list(batches)
        self.calibration_images = sum(len(x) for x in batches)
        layers = quantized_layers(model)
        for name, q in weight_quantizers(model).items():
            q.fit(layers[name].weight)
        quantizers = input_quantizers(model)
        for name, obs in observe_inputs(model, batches, self.config.act_calib_max_samples).items():
            self.calibrate_input(quantizers[name], obs)
        log = {f"{name}.input_quantizer": {"step": q.step.item()} for name, q in quantizers.items()}
        log.update(self.optimise_rounding(model, batches))
        for q in weight_quantizers(model).values():
            q.hard = True
        return log

    def report(self, model: nn.Module) -> dict:
        """Per-layer weight bits as quantized, their parameter-weighted average over the body
        layers (the budget's layers), the number of calibration images, and with mixed
        precision each body layer's coding length in bits per weight."""
        layers = quantized_layers(model)
        bits = {name: q.bits for name, q in weight_quantizers(model).items()}
        sizes = {name: layers[name].weight.numel() for name in self.body}
        out = {
            "layer_precision": {name: [p.weight_bits, p.input_bits] for name, p in self.plan.items()},
            "weight_bits_per_layer": bits,
            "average_weight_bits": sum(bits[n] * s for n, s in sizes.items()) / max(sum(sizes.values()), 1),
            "calibration_images": self.calibration_images,
        }
        if self.config.mixed_precision:
            out["coding_length_bits_per_weight"] = self.coding_lengths
        return out


@register_method("attention_round")
class AttentionRound(PTQNearest):

    @dataclass
    class Config(PTQNearest.Config):
        reconstruction: str = "block"
        block_input: str = "quantized"
        epochs: float = 6.0
        batch_size: int = 32
        lr: float = 0.01
        sigma_start: float = 0.5
        sigma_end: float = 0.05
        window: int | None = 3
        relaxation: str = "expected"

        def __post_init__(self) -> None:
            super().__post_init__()
            _choice("method.reconstruction", self.reconstruction, RECONSTRUCTIONS)
            _choice("method.block_input", self.block_input, BLOCK_INPUTS)
            _choice("method.relaxation", self.relaxation, RELAXATIONS)
            for field in ("epochs", "batch_size", "lr", "sigma_start", "sigma_end"):
                _positive(f"method.{field}", getattr(self, field))
            if self.sigma_end > self.sigma_start:
                raise ValueError(f"method.sigma_end={self.sigma_end} is not allowed; use at most "
                                 f"method.sigma_start={self.sigma_start} (σ anneals down)")
            if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                            or self.window < 1):
                raise ValueError(f"method.window={self.window!r} is not allowed; use an integer ≥ 1 or null (all levels)")

    def make_weight_quantizer(self, bits: int) -> AttentionRoundQuantizer:
        c = self.config
        return AttentionRoundQuantizer(bits, per_channel=c.weight_granularity == "channel",
                                       step_init=c.weight_step_init, window=c.window,
                                       relaxation=c.relaxation)

    def optimise_rounding(self, model: nn.Module, batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
        """Block- (or layer-) wise reconstruction of the rounding (:mod:`qbench.quant.reconstruct`)."""
        c = self.config
        optimise = partial(optimise_unit, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                           sigma_start=c.sigma_start, sigma_end=c.sigma_end)
        return reconstruct(model, batches, c.reconstruction, c.block_input, optimise)
