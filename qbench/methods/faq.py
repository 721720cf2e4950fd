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
``weight_cosine`` (per layer, the final fake-quantized weights against the FP weights at
the start, i.e. the FP baseline), ``weight_cosine_mean`` (over layers), ``fixed_point_steps``
(per layer, [weight, input] step 2^l) and ``calib_batches_used`` (null when the quantizers came
from a checkpoint).
Biases stay in float (the paper keeps the last layer's output in 32-bit fixed point).

Choices the paper leaves open, all fields of ``conf/method/faq.yaml``:
- ``*_8bit`` values serve tensors of more than 4 bits, ``*_4bit`` values 4 bits or fewer (the
  paper gives the 8- and 4-bit settings only).
- ``weight_clip_std_8bit`` / ``weight_clip_std_4bit``: the multiple c of σ (not found; ours 5
  and 2.5).
- ``weight_power_of_two``: false (the default, as the source says: weights clipped at c·σ, then
  evenly binned in [−cσ, cσ)), or true: the range rounded up to a power of two, the
  activations' fixed-point grid, which lands the clip anywhere in [c, 2c)·σ (2.5σ became 4.99σ
  on a Gaussian, a 2.6× larger 4-bit error). Runs before 2026-11-30 used true.
- ``weight_range``: ``fixed`` at calibration, or ``tracked`` (from the current weights every step).
- ``act_statistic``: ``percentile`` (paper) or ``max``; ``act_signed`` the grid of activation
  outputs (false: the paper's post-ReLU inputs; signed data inputs are always signed).
- ``ste``: ``clipped`` (no gradient where the clamp clips) or ``identity``.
- ``calib_max_samples``: values per layer kept for the percentile (a uniform subsample).
Batch norm during calibration runs as fine-tuning will (recipe ``freeze_bn``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from qbench.methods.registry import Method, RunFacts, input_signedness, register_method
from qbench.quant.calibrate import initialize_quantizers, quantized_layers, weight_quantizers
from qbench.quant.convert import LayerPrecision
from qbench.quant.faq import STE, FixedPointQuantizer
from qbench.validate import ActSigned, PositiveFloat, PositiveInt, require

LOW_BITS = 4  # tensors of this many bits or fewer take the paper's 4-bit settings


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


@register_method("faq", trains=True)
class FAQ(Method):

    @dataclass
    class Config:
        act_statistic: Literal["percentile", "max"] = "percentile"
        act_percentile_8bit: PositiveFloat = 99.99
        act_percentile_4bit: PositiveFloat = 99.9
        act_signed: ActSigned = False
        weight_clip_std_8bit: PositiveFloat = 5.0
        weight_clip_std_4bit: PositiveFloat = 2.5
        weight_power_of_two: bool = False
        weight_range: Literal["fixed", "tracked"] = "fixed"
        ste: STE = "clipped"
        calib_batches: PositiveInt = 5
        calib_max_samples: PositiveInt = 1 << 20

        def __post_init__(self) -> None:
            for name in ("act_percentile_8bit", "act_percentile_4bit"):
                require(getattr(self, name) <= 100,
                        f"method.{name}={getattr(self, name)!r} is not allowed; use a number in (0, 100]")

    def weight_quantizer(self, layer: LayerPrecision) -> FixedPointQuantizer:
        c = self.config
        multiple = c.weight_clip_std_4bit if layer.weight_bits <= LOW_BITS else c.weight_clip_std_8bit
        return FixedPointQuantizer(layer.weight_bits, signed=True, statistic="std", level=multiple,
                                   power_of_two=c.weight_power_of_two,
                                   track=c.weight_range == "tracked", ste=c.ste)

    def input_quantizer(self, layer: LayerPrecision) -> FixedPointQuantizer:
        c = self.config
        q = c.act_percentile_4bit if layer.input_bits <= LOW_BITS else c.act_percentile_8bit
        return FixedPointQuantizer(layer.input_bits, signed=input_signedness(layer, c.act_signed),
                                   statistic=c.act_statistic, level=q, ste=c.ste)

    def initialize(self, model: nn.Module, batches: list[torch.Tensor], train_mode: bool) -> None:
        """Ranges from the first ``calib_batches`` calibration batches (the paper's 5)."""
        c = self.config
        initialize_quantizers(model, batches[:c.calib_batches], c.calib_max_samples, train_mode)

    def report(self, model: nn.Module, facts: RunFacts) -> dict:
        layers = quantized_layers(model)
        with torch.no_grad():
            quantized = {name: q(layers[name].weight) for name, q in weight_quantizers(model).items()}
        fp_weights = {name: facts.fp_model.get_submodule(name).weight for name in quantized}
        cosine = weight_cosine(fp_weights, quantized)
        steps = {name: [_step(m.weight_quantizer), _step(m.input_quantizer)] for name, m in layers.items()}
        used = (None if facts.calibration_batches is None
                else min(self.config.calib_batches, facts.calibration_batches))
        return {"weight_cosine": cosine,
                "weight_cosine_mean": sum(cosine.values()) / len(cosine) if cosine else None,
                "fixed_point_steps": steps,
                "calib_batches_used": used}
