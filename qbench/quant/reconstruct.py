"""Output reconstruction for post-training rounding: optimise each unit of the network — a
block or a single layer — so that its quantized output matches the float one, unit by unit in
execution order (the BRECQ-style schedule qbench uses for Attention Round, papers.md §5.3).

For unit i: the target is the float network's output of the unit on the calibration images;
its input is the input the quantized network gives it (units before i already hard-quantized)
or the float one (``block_input``). The learned rounding offsets δ of the unit's
:class:`~qbench.quant.attention_round.AttentionRoundQuantizer` s minimise the mean squared
error over random mini-batches with Adam while the attention width σ anneals (eq. 3 there);
the unit's input quantizers are on, with their calibrated ranges. Then the unit is hard-quantized.

Blocks: the children of the model (recursing through plain ``Sequential`` / ``ModuleList`` /
``ModuleDict`` containers) that hold a quantized layer — ResNet's basic blocks, MobileNetV2's
inverted residuals and conv-BN-ReLU stems, timm's EfficientNet / MixNet blocks, and the stem and
classifier layers on their own.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import nn

from qbench.quant.attention_round import AttentionRoundQuantizer, annealed_sigma
from qbench.quant.calibrate import quantized_layers, set_quantization_enabled
from qbench.quant.layers import QUANT_LAYERS

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
Reconstruction = Literal["block", "layer"]  # the unit whose output is reconstructed


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted unit has been seen."""


def _holds_quantized_layer(module: nn.Module) -> bool:
    return any(isinstance(m, QUANT_LAYERS) for m in module.modules())


def reconstruction_units(model: nn.Module, granularity: Reconstruction) -> dict[str, nn.Module]:
    """Units by name in module order: every quantized layer (``layer``), or blocks (``block``,
    module docstring)."""
    if granularity == "layer":
        return quantized_layers(model)
    units: dict[str, nn.Module] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if not _holds_quantized_layer(child):
                continue
            if type(child) in CONTAINERS:
                visit(f"{prefix}{name}.", child)
            else:
                units[f"{prefix}{name}"] = child
    visit("", model)
    return units


@torch.no_grad()
def execution_order(model: nn.Module, units: dict[str, nn.Module], example: torch.Tensor) -> list[str]:
    """Names of the units in the order the forward pass calls them (units never called are left
    out)."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name))
               for name, m in units.items()]
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def capture(model: nn.Module, unit: nn.Module, batches: list[torch.Tensor],
            with_output: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unit's input (and output) over ``batches``; each forward stops at the unit."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def pre_hook(_m: nn.Module, args: tuple) -> None:
        inputs.append(args[0].detach())
        raise _Stop

    def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        outputs.append(out.detach())
        raise _Stop

    handle = unit.register_forward_hook(hook) if with_output else unit.register_forward_pre_hook(pre_hook)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(inputs), (torch.cat(outputs) if with_output else None)


def unit_quantizers(unit: nn.Module) -> list[AttentionRoundQuantizer]:
    return [m for m in unit.modules() if isinstance(m, AttentionRoundQuantizer)]


@torch.no_grad()
def hard_error(unit: nn.Module, quantizers: list[AttentionRoundQuantizer], inputs: torch.Tensor,
               targets: torch.Tensor, chunk: int) -> float:
    """Mean squared error of the unit's hard-quantized output against the float target."""
    for q in quantizers:
        q.hard = True
    total = sum((unit(x) - t).square().sum().item() for x, t in zip(inputs.split(chunk), targets.split(chunk)))
    return total / targets.numel()


def optimise_unit(unit: nn.Module, quantizers: list[AttentionRoundQuantizer], inputs: torch.Tensor,
                  targets: torch.Tensor, epochs: float, batch_size: int, lr: float,
                  sigma_start: float, sigma_end: float) -> None:
    """Adam on the rounding offsets δ, loss ‖unit(x) − target‖² on random mini-batches, for
    ⌈epochs·N/batch_size⌉ steps (N calibration images), σ annealed from ``sigma_start`` to
    ``sigma_end``."""
    for q in quantizers:
        q.hard = False
    iterations = math.ceil(epochs * len(inputs) / batch_size)
    opt = torch.optim.Adam([q.offset for q in quantizers], lr=lr)
    for t in range(iterations):
        sigma = annealed_sigma(t, iterations, sigma_start, sigma_end)
        for q in quantizers:
            q.sigma = sigma
        idx = torch.randint(len(inputs), (min(batch_size, len(inputs)),), device=inputs.device)
        loss = (unit(inputs[idx]) - targets[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def reconstruct(model: nn.Module, batches: list[torch.Tensor], granularity: Reconstruction, block_input: str,
                optimise: Callable[[nn.Module, list[AttentionRoundQuantizer], torch.Tensor, torch.Tensor], None]
                ) -> dict[str, dict[str, float]]:
    """Optimise the rounding of every unit in execution order (module docstring) with
    ``optimise(unit, quantizers, inputs, targets)`` and hard-quantize it. Returns, per unit,
    the output error with round-to-nearest (δ = 0) and after optimisation."""
    units = reconstruction_units(model, granularity)
    was_training = model.training
    model.eval()
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    errors: dict[str, dict[str, float]] = {}
    try:
        set_quantization_enabled(model, False)
        order = execution_order(model, units, batches[0][:1])
        for name in order:
            unit, quantizers = units[name], unit_quantizers(units[name])
            if not quantizers:
                continue
            set_quantization_enabled(model, False)
            inputs, targets = capture(model, unit, batches, with_output=True)
            set_quantization_enabled(model, True)
            if block_input == "quantized":
                inputs, _ = capture(model, unit, batches, with_output=False)
            chunk = len(batches[0])
            nearest = hard_error(unit, quantizers, inputs, targets, chunk)
            for q in quantizers:
                q.offset.requires_grad_(True)
            optimise(unit, quantizers, inputs, targets)
            for q in quantizers:
                q.offset.requires_grad_(False)
            errors[name] = {"error_nearest": nearest,
                            "error_rounded": hard_error(unit, quantizers, inputs, targets, chunk)}
    finally:
        set_quantization_enabled(model, True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return errors
