"""Initialise every quantizer of a model: weights from themselves, inputs from calibration data."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.layers import QUANT_LAYERS
from qbench.quant.observer import Observation


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def input_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    return {name: m.input_quantizer for name, m in quantized_layers(model).items()
            if isinstance(m.input_quantizer, Quantizer)}


def weight_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    return {name: m.weight_quantizer for name, m in quantized_layers(model).items()
            if isinstance(m.weight_quantizer, Quantizer)}


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, Quantizer):
            m.enabled = enabled


@torch.no_grad()
def observe_inputs(model: nn.Module, batches: Iterable[torch.Tensor], max_samples: int = 1 << 20,
                   train_mode: bool = False) -> dict[str, Observation]:
    """Run ``batches`` through the float network (every quantizer off) and return, per
    quantized layer with an input quantizer, the statistics of that layer's input.

    ``train_mode`` runs batch norm on batch statistics, as the first training batch of a
    quantization-aware run sees it; running statistics and every other buffer are restored
    afterwards, so observing changes nothing in the model."""
    quantizers = input_quantizers(model)
    observations = {name: Observation(max_samples=max_samples) for name in quantizers}
    was_training = model.training
    saved_buffers = {k: v.clone() for k, v in model.state_dict().items()
                     if isinstance(v, torch.Tensor) and k not in dict(model.named_parameters())}
    model.train(train_mode)
    set_quantization_enabled(model, False)
    try:
        for name, q in quantizers.items():
            q.observer = observations[name]
        for x in batches:
            model(x)
    finally:
        for q in quantizers.values():
            q.observer = None
        set_quantization_enabled(model, True)
        model.train(was_training)
        model.load_state_dict(saved_buffers, strict=False)
    return observations


def initialize_quantizers(model: nn.Module, batches: Iterable[torch.Tensor], max_samples: int = 1 << 20,
                          train_mode: bool = False) -> dict[str, dict[str, float]]:
    """Initialise weight quantizers from their layer's weights and input quantizers from the
    float network's inputs over ``batches`` (see :func:`observe_inputs`). Returns the initial
    values per quantizer name, for logging."""
    layers = quantized_layers(model)
    for name, q in weight_quantizers(model).items():
        q.initialize(Observation.of(layers[name].weight))
    for name, obs in observe_inputs(model, batches, max_samples, train_mode).items():
        input_quantizers(model)[name].initialize(obs)
    return quantizer_values(model)


def quantizer_values(model: nn.Module) -> dict[str, dict[str, float]]:
    """Every quantizer's one-number parameters and buffers (step, offset, α), by module name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            out[name] = {field: t.item() for field, t in tensors if t is not None and t.numel() == 1}
    return out
