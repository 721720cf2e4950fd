"""Which layers get which precision, and the swap of float layers for quantized ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.graph import activation_fed_layers
from qbench.quant.layers import QuantConv2d, QuantLinear

QUANTIZABLE = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
Role = Literal["first", "last", "body"]


@dataclass(frozen=True)
class LayerPrecision:
    """Bits of one layer's weights and input; ``None`` keeps that tensor in float.

    ``input_signed`` is ``True`` where the input is signed data rather than an activation
    output (the normalised image, linear-bottleneck outputs and residual sums; see
    :mod:`qbench.quant.graph`): those are quantized on a signed, symmetric grid by every method.
    It is ``None`` for activation outputs, whose grid the method chooses.

    ``role`` says whether the layer is the model's first or last layer (the edge-layer policy
    set its bits) or a body layer (``wbits`` / ``abits``): mixed precision and reports read
    it instead of guessing edges from bit-widths.
    """

    weight_bits: int | None
    input_bits: int | None
    input_signed: bool | None = None
    role: Role = "body"


@dataclass(frozen=True)
class EdgeLayerPolicy:
    """Precision of the first or the last layer (LSQ keeps both at 8 bits)."""

    quantize: bool = True
    weight_bits: int | None = 8
    input_bits: int | None = 8


def quantizable_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) in QUANTIZABLE]


def plan_precision(model: nn.Module, wbits: int, abits: int, first_layer: str, last_layer: str,
                   first: EdgeLayerPolicy, last: EdgeLayerPolicy,
                   skip: tuple[str, ...] = ()) -> dict[str, LayerPrecision]:
    """The precision of every conv/linear layer: ``wbits``/``abits`` except the edge layers and
    ``skip`` (left in float), and whether its input is signed data. Raises if a named layer does
    not exist."""
    names = quantizable_layers(model)
    activation_fed = activation_fed_layers(model, names)
    for name in (first_layer, last_layer, *skip):
        if name not in names:
            raise ValueError(f"layer {name!r} is not a conv/linear layer of this model")
    plan: dict[str, LayerPrecision] = {}
    for name in names:
        if name in skip:
            continue
        role: Role = "first" if name == first_layer else "last" if name == last_layer else "body"
        signed = None if name in activation_fed else True
        if role == "body":
            plan[name] = LayerPrecision(wbits, abits, signed)
        else:
            edge = first if role == "first" else last
            if edge.quantize:
                plan[name] = LayerPrecision(edge.weight_bits, edge.input_bits, signed, role)
    return plan


QuantizerFactory = Callable[[LayerPrecision], Quantizer]


def quantize_model(model: nn.Module, plan: dict[str, LayerPrecision],
                   weight_quantizer: QuantizerFactory, input_quantizer: QuantizerFactory) -> nn.Module:
    """Swap each planned layer for its quantized form, in place; returns ``model``. The
    factories get the layer's :class:`LayerPrecision` and are called only for the tensors it
    quantizes (bits not ``None``)."""
    for name, precision in plan.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child_name)
        wq = weight_quantizer(precision) if precision.weight_bits else None
        aq = input_quantizer(precision) if precision.input_bits else None
        setattr(parent, child_name, QUANTIZABLE[type(layer)](layer, wq, aq))
    return model
