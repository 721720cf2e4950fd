"""Output reconstruction for post-training rounding: optimise each unit of the network — a
block or a single layer — so that its quantized output matches the float one, unit by unit in
execution order (BRECQ, Li et al., ICLR 2021; the schedule qbench uses for Attention Round,
papers.md §5.3, and for AdaRound).

One loop for every learned rounding; what differs between methods is the
:class:`RoundingRule`: which quantizers it rounds, their learned variables, and at each step
its schedule (set on the quantizers) and a regulariser added to the loss.

For unit i: the target is the float network's output of the unit on the calibration images;
its input is the input the quantized network gives it (units before i already hard-quantized)
or the float one (``block_input``). The rule's variables minimise, with Adam on random
mini-batches (:class:`Schedule`), the loss

    mean over images, positions and channels of (unit(x) − target)² + R_t / C

where R_t is the rule's regulariser at step t and C the unit's output channels: the paper's
squared error (summed over channels, averaged over images and positions) plus R_t, divided by C.
The unit's input quantizers are on, with their calibrated ranges. Then the unit is hard-quantized.

Blocks: the children of the model (recursing through plain ``Sequential`` / ``ModuleList`` /
``ModuleDict`` containers) that hold a quantized layer — ResNet's basic blocks, MobileNetV2's
inverted residuals and conv-BN-ReLU stems, timm's EfficientNet / MixNet blocks, and the stem and
classifier layers on their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.calibrate import quantized_layers, set_quantization_enabled
from qbench.quant.layers import QUANT_LAYERS

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
Reconstruction = Literal["block", "layer"]  # the unit whose output is reconstructed
BlockInput = Literal["quantized", "float"]  # a unit's input: the quantized network's (BRECQ) or the float one


class RoundingRule(Protocol):
    """A learned rounding as the loop optimises it. Its quantizers (instances of ``quantizer``)
    have ``hard``: false while optimised, true for the final rounding."""

    quantizer: ClassVar[type[Quantizer]]

    def parameters(self, quantizers: list) -> list[nn.Parameter]:
        """The learned variables of ``quantizers``."""

    def step(self, quantizers: list, t: int, total: int) -> torch.Tensor | None:
        """Set step ``t`` of ``total``'s schedule on ``quantizers``; return the regulariser to
        add to the loss (``None``: none)."""


@dataclass(frozen=True)
class Schedule:
    """How each unit is optimised: the unit (``granularity``), its input (``block_input``), and
    ``iterations`` Adam steps at learning rate ``lr`` on random batches of ``batch_size``."""

    granularity: Reconstruction
    block_input: BlockInput
    iterations: int
    batch_size: int
    lr: float


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


@torch.no_grad()
def hard_error(unit: nn.Module, quantizers: list[Quantizer], inputs: torch.Tensor, targets: torch.Tensor,
               chunk: int) -> float:
    """Mean squared error of the unit's hard-quantized output against the float target."""
    for q in quantizers:
        q.hard = True
    total = sum((unit(x) - t).square().sum().item() for x, t in zip(inputs.split(chunk), targets.split(chunk)))
    return total / targets.numel()


def optimise_unit(unit: nn.Module, quantizers: list[Quantizer], inputs: torch.Tensor, targets: torch.Tensor,
                  rule: RoundingRule, schedule: Schedule) -> None:
    """Adam on the rule's variables, the loss of the module docstring on random mini-batches,
    for ``schedule.iterations`` steps."""
    for q in quantizers:
        q.hard = False
    opt = torch.optim.Adam(rule.parameters(quantizers), lr=schedule.lr)
    for t in range(schedule.iterations):
        regulariser = rule.step(quantizers, t, schedule.iterations)
        idx = torch.randint(len(inputs), (min(schedule.batch_size, len(inputs)),), device=inputs.device)
        out = unit(inputs[idx])
        loss = (out - targets[idx]).square().mean()
        if regulariser is not None:
            loss = loss + regulariser / out.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def reconstruct(model: nn.Module, batches: list[torch.Tensor], rule: RoundingRule,
                schedule: Schedule) -> dict[str, dict[str, float]]:
    """Optimise the rounding of every unit in execution order (module docstring) and
    hard-quantize it. Returns, per unit, the output error of the hard rounding before
    optimisation (round-to-nearest: Attention Round's δ = 0, AdaRound's V₀) and after it."""
    units = reconstruction_units(model, schedule.granularity)
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
            unit = units[name]
            quantizers = [m for m in unit.modules() if isinstance(m, rule.quantizer)]
            if not quantizers:
                continue
            set_quantization_enabled(model, False)
            inputs, targets = capture(model, unit, batches, with_output=True)
            set_quantization_enabled(model, True)
            if schedule.block_input == "quantized":
                inputs, _ = capture(model, unit, batches, with_output=False)
            chunk = len(batches[0])
            nearest = hard_error(unit, quantizers, inputs, targets, chunk)
            variables = rule.parameters(quantizers)
            for p in variables:
                p.requires_grad_(True)
            optimise_unit(unit, quantizers, inputs, targets, rule, schedule)
            for p in variables:
                p.requires_grad_(False)
            errors[name] = {"error_nearest": nearest,
                            "error_rounded": hard_error(unit, quantizers, inputs, targets, chunk)}
    finally:
        set_quantization_enabled(model, True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return errors
