"""The float skeleton of a quantized model, with batch norm folded into the layer before it.

Batch-norm folding (Jacob et al., CVPR 2018, section 3.2; here after training): a layer with
output y = W∗x + b followed by BN(y) = γ(y − μ)/√(σ² + ε) + β_BN is one layer with per-channel
gain g = γ/√(σ² + ε) and bias b' = (b − μ)·g + β_BN, BN(W∗x + b) = g·(W∗x) + b'. qbench
quantizes W before BN, so g is not folded into the weights (that would move them off their
grid): it becomes part of each output channel's scale, and the codes of W stay as trained.

The skeleton is the model traced by ``torch.fx`` with every quantized layer a plain float layer
and every ReLU its own call (``torch.relu``): torchvision's ResNet block calls one ``nn.ReLU``
module twice, which PT2E quantizers refuse ("Input partition has more than one output node").
Batch norm is one traced call even where it carries its activation (timm's ``BatchNormAct2d``,
in EfficientNet and MixNet: batch norm, dropout, activation), so it is folded there too and its
dropout and activation stay as calls. Traced through, it would reach PT2E as a functional batch
norm that ``prepare_pt2e`` folds into the conv's weights itself, after qbench's per-channel
weight scales were fixed: on EfficientNet-B0 W4A4 the int8 model then agreed with the
simulation on 91 % of images.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d
from torch import fx, nn

from qbench.quant.layers import QUANT_LAYERS, QuantConv2d


@dataclass(frozen=True)
class Folded:
    """Per output channel: the gain g multiplying W∗x and the bias b' (float64); the name of
    the batch norm folded in (None without one)."""

    gain: torch.Tensor
    bias: torch.Tensor
    bn: str | None = None


def fold_batch_norm(bias: torch.Tensor | None, bn: nn.BatchNorm2d | None, channels: int,
                    bn_name: str | None = None) -> Folded:
    """g = γ/√(σ² + ε), b' = (b − μ)·g + β_BN from BN's running statistics (eval mode); without
    BN, g = 1 and b' = b."""
    b = torch.zeros(channels, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    if bn is None:
        return Folded(torch.ones(channels, dtype=torch.float64), b)
    gain = bn.weight.detach().double().cpu() / torch.sqrt(bn.running_var.double().cpu() + bn.eps)
    return Folded(gain, (b - bn.running_mean.double().cpu()) * gain + bn.bias.detach().double().cpu(), bn_name)


def _plain_layer(layer: nn.Module) -> nn.Module:
    """The float layer a quantized layer extends, sharing its weight and bias."""
    if isinstance(layer, QuantConv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, device="meta")
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with each quantized layer replaced by the float layer it extends."""
    model = copy.deepcopy(model).cpu().eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, QUANT_LAYERS):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _plain_layer(module))
    return model


class BatchNormLeafTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps every batch norm, subclasses included, one module call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, module_qualified_name)


def skeleton(model: nn.Module) -> tuple[fx.GraphModule, dict[str, Folded]]:
    """(traced float skeleton of ``model`` with BN folded away, {layer name: folded gain and
    bias}) for every conv/linear layer. A BN is folded when it directly follows a conv that has
    no other user; each ``nn.ReLU`` call becomes a ``torch.relu`` node. Raises ``RuntimeError``
    when the model cannot be traced."""
    plain = float_copy(model)
    try:
        gm = fx.GraphModule(plain, BatchNormLeafTracer().trace(plain), type(plain).__name__)
    except Exception as exc:
        raise RuntimeError(f"cannot trace {type(model).__name__}: {exc}") from exc
    modules = dict(gm.named_modules())
    folded: dict[str, Folded] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            continue
        module = modules[node.target]
        users = list(node.users)
        bn_name = None
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(modules[users[0].target], nn.BatchNorm2d)):
            bn_name = users[0].target
            _drop_batch_norm(gm, users[0], node, isinstance(modules[bn_name], BatchNormAct2d))
        folded[node.target] = fold_batch_norm(module.bias, modules.get(bn_name), module.weight.shape[0], bn_name)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            with gm.graph.inserting_after(node):
                relu = gm.graph.call_function(torch.relu, node.args)
            node.replace_all_uses_with(relu)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, folded


def _drop_batch_norm(gm: fx.GraphModule, bn: fx.Node, layer: fx.Node, with_act: bool) -> None:
    """Remove the batch norm call ``bn`` after ``layer`` (its gain and bias are folded); a
    ``BatchNormAct2d`` leaves its dropout and activation as calls of its own submodules."""
    out = layer
    if with_act:
        with gm.graph.inserting_after(bn):
            drop = gm.graph.call_module(f"{bn.target}.drop", (layer,))
        with gm.graph.inserting_after(drop):
            out = gm.graph.call_module(f"{bn.target}.act", (drop,))
    bn.replace_all_uses_with(out)
    gm.graph.erase_node(bn)
