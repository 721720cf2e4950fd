"""FAQ: Fine-tuning After Quantization (McKinstry et al., arXiv 1809.04191; EMC2 2019).

Every conv/linear layer gets FAQ's fixed-point quantizer Q_{b,l}
(:class:`qbench.quant.faq.FixedPointQuantizer`) on its weights (signed) and on its input.
Activation ranges are calibrated once by a forward pass of the unquantized network over the
first ``calib_batches`` calibration batches (paper: 5 training batches): per layer the
99.99th (8-bit) or 99.9th (4-bit) percentile of the inputs, rounded up to a power of two, sets
l. Weight ranges are a multiple of the weights' standard deviation. The first and last layers
stay at 8 bits by the precision policy (``quant.first_layer`` / ``quant.last_layer``). The
network is then fine-tuned from the FP weights by the shared trainer, straight-through, with
the FAQ recipes (``conf/recipe/faq_*``); the steps stay fixed. ``report`` adds to the record
``weight_cosine`` (per layer, the final fake-quantized weights against the FP weights saved at
``prepare``), ``weight_cosine_mean`` (over layers), ``fixed_point_steps`` (per layer, [weight,
input] step 2^l) and ``calib_batches_used`` (null when the quantizers came from a checkpoint).
Biases stay in float (the paper keeps the last layer's output in 32-bit fixed point).

Choices the paper leaves open, all fields of ``conf/method/faq.yaml``:
- ``*_8bit`` values serve tensors of more than 4 bits, ``*_4bit`` values 4 bits or fewer (the
  paper gives the 8- and 4-bit settings only).
- ``weight_clip_std_8bit`` / ``weight_clip_std_4bit``: the multiple of σ (not found; ours 5
  and 2.5: rounded up to a power of two the range lands between c·σ and 2c·σ).
- ``weight_power_of_two``: weights on the same fixed-point grid as activations (true), or
  evenly binned in [−cσ, cσ) (false).
- ``weight_range``: ``fixed`` at calibration, or ``tracked`` (from the current weights every step).
- ``act_statistic``: ``percentile`` (paper) or ``max``; ``act_signed`` the grid of activation
  outputs (false: the paper's post-ReLU inputs; signed data inputs are always signed).
- ``ste``: ``clipped`` (no gradient where the clamp clips) or ``identity``.
- ``calib_max_samples``: values per layer kept for the percentile (a uniform subsample).
Batch norm during calibration runs as fine-tuning will (recipe ``freeze_bn``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from qbench.methods.lsq import parse_signedness
from qbench.methods.registry import Method, register_method
from qbench.quant.calibrate import initialize_quantizers, quantized_layers, weight_quantizers
from qbench.quant.convert import LayerPrecision, quantize_model
from qbench.quant.faq import STES, FixedPointQuantizer

LOW_BITS = 4  # tensors of this many bits or fewer take the paper's 4-bit settings
ACT_STATISTICS = ("percentile", "max")
WEIGHT_RANGES = ("fixed", "tracked")


def weight_cosine(fp: dict[str, torch.Tensor], quantized: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine similarity ⟨a, b⟩ / (‖a‖‖b‖) per layer between FP and quantized weights, over the
    layers both hold."""
    out = {}
    for name in sorted(fp.keys() & quantized.keys()):
        a = fp[name].detach().double().flatten().cpu()
        b = quantized[name].detach().double().flatten().cpu()
        out[name] = (a @ b / (a.norm() * b.norm())).item()
    return out


def _step(quantizer: nn.Module) -> float | None:
    return quantizer.step.item() if isinstance(quantizer, FixedPointQuantizer) else None


@register_method("faq")
class FAQ(Method):
    trains = True

    @dataclass
    class Config:
        act_statistic: str = "percentile"
        act_percentile_8bit: float = 99.99
        act_percentile_4bit: float = 99.9
        act_signed: str = "false"
        weight_clip_std_8bit: float = 5.0
        weight_clip_std_4bit: float = 2.5
        weight_power_of_two: bool = True
        weight_range: str = "fixed"
        ste: str = "clipped"
        calib_batches: int = 5
        calib_max_samples: int = 1 << 20

        def __post_init__(self) -> None:
            if self.act_statistic not in ACT_STATISTICS:
                raise ValueError(f"method.act_statistic={self.act_statistic!r} is not allowed; "
                                 f"use {' or '.join(ACT_STATISTICS)}")
            for name in ("act_percentile_8bit", "act_percentile_4bit"):
                if not 0 < getattr(self, name) <= 100:
                    raise ValueError(f"method.{name}={getattr(self, name)!r} is not allowed; use a number in (0, 100]")
            for name in ("weight_clip_std_8bit", "weight_clip_std_4bit"):
                if not getattr(self, name) > 0:
                    raise ValueError(f"method.{name}={getattr(self, name)!r} is not allowed; use a number > 0")
            parse_signedness(self.act_signed, "method.act_signed")
            if self.weight_range not in WEIGHT_RANGES:
                raise ValueError(f"method.weight_range={self.weight_range!r} is not allowed; use fixed or tracked")
            if self.ste not in STES:
                raise ValueError(f"method.ste={self.ste!r} is not allowed; use {' or '.join(STES)}")
            if isinstance(self.calib_batches, bool) or not isinstance(self.calib_batches, int) or self.calib_batches < 1:
                raise ValueError(f"method.calib_batches={self.calib_batches!r} is not allowed; use an integer ≥ 1")

    def __init__(self, config: object) -> None:
        super().__init__(config)
        self.fp_weights: dict[str, torch.Tensor] = {}
        self.calib_batches_used: int | None = None  # None: quantizers restored from a checkpoint

    def make_weight_quantizer(self, bits: int) -> FixedPointQuantizer:
        c = self.config
        multiple = c.weight_clip_std_4bit if bits <= LOW_BITS else c.weight_clip_std_8bit
        return FixedPointQuantizer(bits, signed=True, statistic="std", level=multiple,
                                   power_of_two=c.weight_power_of_two,
                                   track=c.weight_range == "tracked", ste=c.ste)

    def make_input_quantizer(self, bits: int, signed: bool | None) -> FixedPointQuantizer:
        c = self.config
        if signed is None:
            signed = parse_signedness(c.act_signed, "method.act_signed")
        q = c.act_percentile_4bit if bits <= LOW_BITS else c.act_percentile_8bit
        return FixedPointQuantizer(bits, signed=signed, statistic=c.act_statistic, level=q, ste=c.ste)

    def prepare(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> nn.Module:
        self.fp_weights = {name: model.get_submodule(name).weight.detach().cpu().clone()
                           for name, p in plan.items() if p.weight_bits}
        return quantize_model(model, plan, self.make_weight_quantizer, self.make_input_quantizer)

    def _counted(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        self.calib_batches_used = 0
        for x in batches:
            if self.calib_batches_used == self.config.calib_batches:
                return
            self.calib_batches_used += 1
            yield x

    def calibrate(self, model: nn.Module, batches: Iterable[torch.Tensor], train_mode: bool = False) -> dict:
        initialize_quantizers(model, self._counted(batches), self.config.calib_max_samples, train_mode)
        return {name: {"step": m.step.item()} for name, m in model.named_modules()
                if isinstance(m, FixedPointQuantizer)}

    def report(self, model: nn.Module) -> dict:
        layers = quantized_layers(model)
        with torch.no_grad():
            quantized = {name: q(layers[name].weight) for name, q in weight_quantizers(model).items()}
        cosine = weight_cosine(self.fp_weights, quantized)
        steps = {name: [_step(m.weight_quantizer), _step(m.input_quantizer)] for name, m in layers.items()}
        return {"weight_cosine": cosine,
                "weight_cosine_mean": sum(cosine.values()) / len(cosine) if cosine else None,
                "fixed_point_steps": steps,
                "calib_batches_used": self.calib_batches_used}

