"""LSQ: Learned Step Size Quantization (Esser, McKinstry, Bablani, Appuswamy, Modha; ICLR 2020).

Every conv/linear layer gets a learned-step quantizer on its weights (signed, per tensor) and on
its input (unsigned: the paper quantizes post-ReLU activations), initialised as in section 2.1,
s₀ = 2⟨|v|⟩/√Q_P (activations from the float network's inputs over the calibration batches),
then the whole network is fine-tuned from the float baseline with the shared trainer. The
quantizer itself is :class:`qbench.quant.lsq.LearnedStepQuantizer`.

Choices the paper leaves open, all fields of ``conf/method/lsq.yaml``:
- ``act_signed``: the grid of activation outputs, ``false`` (paper); ``true`` or ``auto``
  (signed where the calibration inputs hold negative values). Inputs that are not activation
  outputs — the normalised image, linear-bottleneck outputs and residual sums, which EfficientNet,
  MixNet and MobileNetV2 feed to each block's first 1×1 conv — are signed data and always get a
  signed grid (:mod:`qbench.quant.graph`); an unsigned grid there would discard half the signal.
Activation statistics are observed as the first training batch sees the network (the paper
initialises from that batch): batch norm on batch statistics, or on running statistics when the
recipe sets ``freeze_bn``; running statistics are restored afterwards.
- ``per_example_numel``: N of the gradient scale 1/√(N·Q_P) counts one example's features
  instead of the whole batch tensor (public implementations use the whole tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from qbench.methods.registry import Method, register_method
from qbench.quant.calibrate import initialize_quantizers
from qbench.quant.convert import LayerPrecision, quantize_model
from qbench.quant.lsq import LearnedStepQuantizer

SIGNEDNESS = {"false": False, "true": True, "auto": None}


def parse_signedness(value: object, field: str) -> bool | None:
    key = str(value).lower()
    if key not in SIGNEDNESS:
        raise ValueError(f"{field} must be one of false, true, auto; got {value!r}")
    return SIGNEDNESS[key]


@register_method("lsq")
class LSQ(Method):
    trains = True

    @dataclass
    class Config:
        act_signed: str = "false"
        grad_scale: bool = True
        per_example_numel: bool = False
        calib_max_samples: int = 1 << 18

        def __post_init__(self) -> None:
            parse_signedness(self.act_signed, "method.act_signed")

    def make_weight_quantizer(self, bits: int) -> LearnedStepQuantizer:
        return LearnedStepQuantizer(bits, signed=True, grad_scale=self.config.grad_scale)

    def make_input_quantizer(self, bits: int, signed: bool | None) -> LearnedStepQuantizer:
        if signed is None:
            signed = parse_signedness(self.config.act_signed, "method.act_signed")
        return LearnedStepQuantizer(bits, signed=signed, grad_scale=self.config.grad_scale,
                                    per_example_numel=self.config.per_example_numel)

    def prepare(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> nn.Module:
        return quantize_model(model, plan, self.make_weight_quantizer, self.make_input_quantizer)

    def calibrate(self, model: nn.Module, batches: Iterable[torch.Tensor], train_mode: bool = False) -> dict:
        return initialize_quantizers(model, batches, self.config.calib_max_samples, train_mode)
