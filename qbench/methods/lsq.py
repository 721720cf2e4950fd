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

from torch import nn

from qbench.methods.registry import Method, RunFacts, input_signedness, register_method
from qbench.quant.convert import LayerPrecision
from qbench.quant.lsq import LearnedStepQuantizer, floored_steps
from qbench.validate import ActSigned, PositiveInt


@register_method("lsq", trains=True)
class LSQ(Method):

    @dataclass
    class Config:
        act_signed: ActSigned = False
        grad_scale: bool = True
        per_example_numel: bool = False
        calib_max_samples: PositiveInt = 1 << 18

    def weight_quantizer(self, layer: LayerPrecision) -> LearnedStepQuantizer:
        return LearnedStepQuantizer(layer.weight_bits, signed=True, grad_scale=self.config.grad_scale)

    def input_quantizer(self, layer: LayerPrecision) -> LearnedStepQuantizer:
        c = self.config
        return LearnedStepQuantizer(layer.input_bits, signed=input_signedness(layer, c.act_signed),
                                    grad_scale=c.grad_scale, per_example_numel=c.per_example_numel,
                                    batch_split=True)

    def report(self, model: nn.Module, facts: RunFacts) -> dict:
        """``steps_at_floor``: the quantizers training drove to the step floor (:func:`floored_steps`)."""
        return {"steps_at_floor": floored_steps(model)}
