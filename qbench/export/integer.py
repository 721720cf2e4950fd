"""The integer reference of a quantized model: every quantized layer an :class:`IntegerLayer`.

Built from the float skeleton (:func:`qbench.export.fold.skeleton`): batch norm folded, each
quantized conv/linear replaced by its integer form with the codes and scales the simulation
used (:mod:`qbench.export.affine`). Where a layer feeds the next quantized layer directly
(conv → [ReLU] → conv), the pair is joined by requantisation to the next layer's grid and codes
pass between them (Jacob et al., CVPR 2018, section 2.3); elsewhere (residual adds, pools, the
logits) the int32 accumulator is read out as a real value, as the simulation computes those
ops in float. Layers the run left in float stay float, with their batch norm folded.
Plain PyTorch integer ops: it runs on any device PyTorch runs on, slowly.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from qbench.export.affine import (
    AFFINE_FORMS,
    Affine,
    NoIntegerForm,
    read_affine,
    weight_codes,
)
from qbench.export.fold import Folded, skeleton
from qbench.export.layers import IntegerLayer
from qbench.quant.base import Quantizer
from qbench.quant.calibrate import quantized_layers


@dataclass(frozen=True)
class LayerForm:
    """What the integer model needs of one quantized layer: its weight codes and per-channel
    weight scale, its input grid, and its folded batch norm."""

    codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_bits: int
    input_form: Affine
    folded: Folded


def layer_forms(model: nn.Module, folded: dict[str, Folded]) -> dict[str, LayerForm]:
    """{layer name: :class:`LayerForm`} of every quantized layer of ``model``; raises
    :class:`NoIntegerForm` for a layer whose weights or input stay float or whose quantizer has
    no affine form."""
    layers = quantized_layers(model)
    foreign = Counter(type(q).__name__ for layer in layers.values()
                      for q in (layer.weight_quantizer, layer.input_quantizer)
                      if isinstance(q, Quantizer) and type(q) not in AFFINE_FORMS)
    if foreign:
        raise NoIntegerForm(", ".join(f"{name} ({count} tensors)" for name, count in foreign.most_common())
                            + " quantize to levels without an affine form (scale·integer + offset)")
    forms = {}
    for name, layer in layers.items():
        wq, iq = layer.weight_quantizer, layer.input_quantizer
        if not isinstance(wq, Quantizer) or not isinstance(iq, Quantizer):
            raise NoIntegerForm(f"layer {name} keeps its {'weights' if not isinstance(wq, Quantizer) else 'input'} "
                                "in float: an integer layer needs both quantized")
        codes, wform = weight_codes(wq, layer.weight, name)
        forms[name] = LayerForm(codes, wform.scale, wform.bits, read_affine(iq, name), folded[name])
    return forms


def fold_float_layer(layer: nn.Module, folded: Folded) -> None:
    """Fold (g, b') into a float layer's own weight and bias, in place (a layer the run left in float)."""
    with torch.no_grad():
        gain = folded.gain.to(layer.weight.dtype).view((-1,) + (1,) * (layer.weight.dim() - 1))
        layer.weight = nn.Parameter(layer.weight * gain)
        layer.bias = nn.Parameter(folded.bias.to(layer.weight.dtype))


@torch.no_grad()
def input_shapes(gm: fx.GraphModule, names: list[str], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The shape of one example of each named layer's input, from a forward pass of ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shapes[name] = tuple(args[0].shape[1:])
        return hook

    hooks = [gm.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        gm(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def chains(gm: fx.GraphModule, names: set[str]) -> dict[str, tuple[str, bool]]:
    """{layer: (next layer, ReLU between)} for each quantized layer whose output feeds exactly
    one quantized layer's input, directly or through one ReLU, and nothing else."""
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in names}
    out = {}
    for name, node in nodes.items():
        users = list(node.users)
        relu = len(users) == 1 and users[0].op == "call_function" and users[0].target is torch.relu
        consumer = list(users[0].users) if relu else users
        if len(users) == 1 and len(consumer) == 1 and consumer[0].target in nodes and consumer[0].op == "call_module":
            head = users[0] if relu else node
            if consumer[0].args[0] is head:
                out[name] = (consumer[0].target, relu)
    return out


def integer_reference(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The integer model of the quantized ``model`` (module docstring), on the CPU in eval mode;
    ``example`` is one input batch (its shape fixes the offset maps of LSQ+)."""
    gm, folded = skeleton(model)
    forms = layer_forms(model, folded)
    shapes = input_shapes(gm, list(forms), example)
    links = chains(gm, set(forms))
    fed = {nxt for nxt, _ in links.values()}
    for name, layer in dict(gm.named_modules()).items():
        if name in folded and name not in forms:
            fold_float_layer(layer, folded[name])
    for name, form in forms.items():
        nxt, relu = links.get(name, (None, False))
        integer = IntegerLayer(gm.get_submodule(name), form.codes, form.weight_scale, form.input_form,
                               form.folded.gain, form.folded.bias, shapes[name],
                               output_form=forms[nxt].input_form if nxt else None, relu=relu,
                               takes_codes=name in fed)
        gm.delete_submodule(name)
        gm.add_submodule(name, integer)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in links and links[node.target][1]:
            relu_node = next(iter(node.users))
            relu_node.replace_all_uses_with(node)
            gm.graph.erase_node(relu_node)
    gm.recompile()
    return gm.eval()
