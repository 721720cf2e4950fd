"""Quantizers, quantized layers, the conversion policy and quantizer initialisation."""
from qbench.quant.base import Quantizer
from qbench.quant.calibrate import initialize_quantizers, input_quantizers, weight_quantizers
from qbench.quant.convert import EdgeLayerPolicy, LayerPrecision, plan_precision, quantize_model
from qbench.quant.grid import integer_range
from qbench.quant.layers import QuantConv2d, QuantLinear
from qbench.quant.lsq import LearnedStepFakeQuant, LearnedStepQuantizer
from qbench.quant.observer import Observation

__all__ = [
    "EdgeLayerPolicy", "LayerPrecision", "LearnedStepFakeQuant", "LearnedStepQuantizer",
    "Observation", "QuantConv2d", "QuantLinear", "Quantizer", "initialize_quantizers",
    "input_quantizers", "integer_range", "plan_precision", "quantize_model", "weight_quantizers",
]
