"""The phases that turn an FP baseline into the quantized network, written once for every
method: plan → ``adjust_plan`` → prepare → ``initialize`` → (fine-tune) → ``finalize``.

:func:`qbench.run.execute` drives them in that order, fine-tuning with the shared trainer in
between when the method was registered with ``trains=True``; :func:`qbench.evaluate.rebuild`
repeats prepare from a checkpoint's stored plan.
"""
from __future__ import annotations

import torch
from torch import nn

from qbench.methods import Method
from qbench.models import model_spec
from qbench.quant.convert import EdgeLayerPolicy, LayerPrecision, plan_precision, quantize_model


def plan_layers(model: nn.Module, cfg: dict, method: Method) -> dict[str, LayerPrecision]:
    """Every conv/linear layer's precision by the config's policy (``wbits``, ``abits``,
    ``quant.*``), each with its role (first / last / body), then as the method adjusts it."""
    spec = model_spec(cfg["model"]["name"])
    q = cfg["quant"]
    plan = plan_precision(model, cfg["wbits"], cfg["abits"], spec.first_layer, spec.last_layer,
                          EdgeLayerPolicy(**q["first_layer"]), EdgeLayerPolicy(**q["last_layer"]),
                          tuple(q["skip_layers"]))
    return method.adjust_plan(model, plan)


def prepare(model: nn.Module, plan: dict[str, LayerPrecision], method: Method) -> nn.Module:
    """Swap the planned layers for quantized ones built by the method's factories (in place)."""
    return quantize_model(model, plan, method.weight_quantizer, method.input_quantizer)


def initialize(model: nn.Module, method: Method, cfg: dict, batches: list[torch.Tensor]) -> None:
    """Initialise the quantizers on the calibration ``batches``, with batch norm as
    fine-tuning will run it (batch statistics unless the recipe freezes it)."""
    train_mode = method.trains and not cfg["recipe"]["qat"].get("freeze_bn", False)
    method.initialize(model, batches, train_mode)
