"""Which conv/linear layers read the output of an activation function.

Activation quantizers (LSQ's unsigned grid, LSQ+'s four configurations) are defined for the
outputs of activation functions: ReLU outputs are non-negative, Swish outputs have a small
negative tail that an unsigned grid clips. Other layer inputs hold signed data of either sign
in equal measure: the normalised image, the output of a linear bottleneck (BN without an
activation) and a residual sum of such outputs (EfficientNet-B0, MixNet-S and MobileNetV2
feed these to the first 1×1 conv of every inverted-residual block). An unsigned grid there
discards half of the signal, which is not what the papers' "unsigned activations" mean.

:func:`activation_fed_layers` finds the first kind by tracing the float model with
``torch.fx`` and walking back from each layer's input through shape-only and pooling ops to the
op that produced it (see :func:`_activation_derived`).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.LeakyReLU,
                      nn.ELU, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid)
ACTIVATION_FUNCTIONS = {F.relu, F.relu6, F.silu, F.hardswish, F.gelu, F.mish, F.leaky_relu,
                        F.elu, F.hardtanh, F.sigmoid, F.hardsigmoid, torch.relu, torch.sigmoid}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_"}

PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                        nn.MaxPool2d, nn.AdaptiveMaxPool2d)
PASS_THROUGH_FUNCTIONS = {torch.flatten, torch.split, torch.chunk, operator.getitem, F.dropout,
                          F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_max_pool2d,
                          F.pad, torch.mean}
PASS_THROUGH_METHODS = {"flatten", "view", "reshape", "mean", "contiguous", "split", "chunk",
                        "squeeze", "unsqueeze", "permute", "to", "float"}


OpKinds = tuple[tuple[type[nn.Module], ...], set, set]  # module types, functions, method names
ACTIVATIONS: OpKinds = (ACTIVATION_MODULES, ACTIVATION_FUNCTIONS, ACTIVATION_METHODS)
PASS_THROUGH: OpKinds = (PASS_THROUGH_MODULES, PASS_THROUGH_FUNCTIONS, PASS_THROUGH_METHODS)


def _is_kind(node: fx.Node, modules: dict[str, nn.Module], kinds: OpKinds) -> bool:
    """Whether ``node`` calls one of ``kinds``' modules, functions or tensor methods."""
    module_types, functions, methods = kinds
    if node.op == "call_module":
        return isinstance(modules[node.target], module_types)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


MULTIPLY = {operator.mul, torch.mul}


def _activation_derived(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node`` is an activation output, reached through shape-only and pooling ops, or a
    product of such outputs (a squeeze-excite block scales a Swish output by a sigmoid gate)."""
    while _is_kind(node, modules, PASS_THROUGH) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    if node.op == "call_function" and node.target in MULTIPLY:
        factors = [a for a in node.args if isinstance(a, fx.Node)]
        return bool(factors) and all(_activation_derived(a, modules) for a in factors)
    return _is_kind(node, modules, ACTIVATIONS)


def activation_fed_layers(model: nn.Module, layers: list[str]) -> set[str]:
    """The names among ``layers`` (leaf conv/linear modules of ``model``) whose input is the
    output of an activation function. Raises ``RuntimeError`` when the model cannot be traced."""
    tracer = fx.Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        raise RuntimeError(f"cannot trace {type(model).__name__} to find activation inputs: {err}") from err
    modules = dict(model.named_modules())
    wanted = set(layers)
    fed: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in wanted and isinstance(node.args[0], fx.Node):
            if _activation_derived(node.args[0], modules):
                fed.add(node.target)
    return fed
