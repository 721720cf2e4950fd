"""Batch norm, activation and the next layer's LSQ / LSQ+ input quantizer in one pass (training).

In a QAT step the three are separate memory passes forward and backward: batch norm writes y,
the activation a = act(y), the quantizer â; the backward reads and writes each again. Fused,
the forward computes the batch statistics (ATen, the running statistics updated exactly as
``nn.BatchNorm2d`` does) and then â = q(act(x·k + c)) in one loop, k = γ/√(σ² + ε),
c = β_bn − μ·k; the backward recomputes y, a and z = (a − β)/s from the saved conv output x in
one loop that yields ∂L/∂y and the step and offset sums, and ATen's batch-norm backward turns
∂L/∂y into ∂L/∂x, ∂L/∂γ, ∂L/∂β_bn. Only x is kept for the backward (eager keeps x and act(y)).

The gradients are the quantizer's (:mod:`qbench.quant.lsq`, LSQ eq. 3, LSQ+ eq. 5-6) times the
activation's derivative (ReLU, ReLU6: 1 strictly inside their range, as PyTorch's backward;
SiLU: σ(y)(1 + y(1 − σ(y)))) through batch norm: the same math as the unfused modules, up to
float rounding (tests/test_fused.py states the tolerances).

:func:`fuse_activation_quantizers` finds the sites (``runtime.fuse_batch_norm``): a batch norm
(``nn.BatchNorm2d``, or timm's ``BatchNormAct2d`` with its activation) whose output goes, through
an activation module called nowhere else, to one quantized conv and nothing else. The batch norm
becomes a :class:`FusedBatchNormAct2d` holding the same parameters and buffers (state-dict keys
unchanged), the separate activation module an ``nn.Identity``, and the conv takes its input as
already quantized. Without gradients (evaluation), and for any quantizer but LSQ / LSQ+ with a
zero or learned offset, the module computes what the unfused modules compute one after the
other, so evaluated accuracy is bit for bit that of the unfused network; with the native ops
(``runtime.native_kernels``) an evaluation quantizes the batch norm's output in place, a ReLU or
ReLU6 in the same pass, since the quantizer is its one reader (:meth:`FusedBatchNormAct2d._evaluate`).
A ReLU module that a block calls twice (torchvision's ResNet ``BasicBlock``) is not a site:
removing it would change the other call.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import BatchNormAct2d
from torch import fx, nn

from qbench.quant import native
from qbench.quant.base import Quantizer
from qbench.quant.kernels import kernel
from qbench.quant.layers import QuantConv2d, QuantLinear
from qbench.quant.lsq import LearnedStepQuantizer, fake_quantize, fake_quantize_grads

ACTIVATION_KINDS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu",
                                                 nn.Identity: "identity"}


def _activation(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "relu6":
        return torch.clamp(y, 0.0, 6.0)
    if act == "silu":
        return y * torch.sigmoid(y)
    return y


def _activation_grad(y: torch.Tensor, grad: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.where(y > 0, grad, 0.0)
    if act == "relu6":
        return torch.where((y > 0) & (y < 6), grad, 0.0)
    if act == "silu":
        sig = torch.sigmoid(y)
        return grad * sig * (1 + y * (1 - sig))
    return grad


@kernel
def _forward_kernel(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, step: torch.Tensor,
                    offset: torch.Tensor | None, qmin: int, qmax: int, act: str) -> torch.Tensor:
    """â = LSQ(act(x·k + c)) (:func:`qbench.quant.lsq.fake_quantize`)."""
    return fake_quantize(_activation(x * scale + shift, act), step, offset, qmin, qmax)


@kernel
def _backward_kernel(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, step: torch.Tensor,
                     offset: torch.Tensor | None, grad_out: torch.Tensor, qmin: int, qmax: int,
                     act: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂y, Σ ∂L/∂â·∂â/∂s, Σ ∂L/∂â·∂â/∂β) before the gradient scale, y = x·k + c recomputed."""
    y = x * scale + shift
    grad_a, grad_step, grad_offset = fake_quantize_grads(_activation(y, act), step, offset, grad_out, qmin, qmax)
    return _activation_grad(y, grad_a, act), grad_step, grad_offset


class ChannelView:
    """A 4-D (N, C, H, W) tensor's layout as the kernels see it: (N·H·W, C) when it is dense
    channels_last (also every tensor with H = W = 1), else (N, C, H·W) dense. Two ranks for every
    shape, so that one compiled kernel per activation serves every spatial size instead of
    specialising on each size-1 dimension."""

    def __init__(self, x: torch.Tensor) -> None:
        self.shape = x.shape
        self.channels_last = x.is_contiguous(memory_format=torch.channels_last)

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (of :attr:`shape`) in this layout, copied only where it lies otherwise; detached,
        so that it has no base tensor (a compiled kernel would guard on the base's sizes)."""
        n, c, h, w = self.shape
        if self.channels_last:
            return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c).detach()
        return t.contiguous().view(n, c, h * w).detach()

    def per_channel(self, t: torch.Tensor) -> torch.Tensor:
        """A (C,) tensor broadcast along the channel dimension of :meth:`flat`."""
        return t.view(1, -1) if self.channels_last else t.view(1, -1, 1)

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`flat`: the 4-D tensor, channels_last or contiguous as the input was."""
        n, c, h, w = self.shape
        return t.view(n, h, w, c).permute(0, 3, 1, 2) if self.channels_last else t.view(n, c, h, w)


class BatchNormActQuant(torch.autograd.Function):
    """â = LSQ(act(BN(x))) with the gradients of the three modules (module docstring).

    ``batch_stats``: normalise with the batch's statistics and update the running ones by
    ``momentum`` (training), else with the running statistics (evaluation, ``freeze_bn``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                running_var: torch.Tensor, batch_stats: bool, momentum: float, eps: float, act: str,
                step: torch.Tensor, offset: torch.Tensor | None, qmin: int, qmax: int,
                grad_scale: float) -> torch.Tensor:
        if batch_stats:
            mean, var = torch.ops.aten.batch_norm_update_stats(x, running_mean, running_var, momentum)
        else:
            mean, var = running_mean, running_var
        invstd = (var + eps).sqrt().reciprocal()
        scale = weight.detach() * invstd
        shift = bias.detach() - mean * scale
        step, offset = step.detach(), offset.detach() if offset is not None else None
        view = ChannelView(x)
        out = _forward_kernel(view.flat(x), view.per_channel(scale), view.per_channel(shift), step, offset,
                              qmin, qmax, act)
        ctx.save_for_backward(x, weight, running_mean, running_var, mean, invstd, scale, shift, step, offset)
        ctx.settings = (batch_stats, eps, act, qmin, qmax, grad_scale, view)
        return view.restore(out)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight, running_mean, running_var, mean, invstd, scale, shift, step, offset = ctx.saved_tensors
        batch_stats, eps, act, qmin, qmax, grad_scale, view = ctx.settings
        grad_y, grad_step, grad_offset = _backward_kernel(view.flat(x), view.per_channel(scale), view.per_channel(shift),
                                                          step, offset, view.flat(grad_out), qmin, qmax, act)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            view.restore(grad_y), x, weight.detach(), running_mean, running_var, mean if batch_stats else None,
            invstd if batch_stats else None, batch_stats, eps, list(ctx.needs_input_grad[:3]))
        grad_step = (grad_step * grad_scale).reshape(step.shape)
        grad_offset = (grad_offset * grad_scale).reshape(offset.shape) if offset is not None else None
        return (grad_x, grad_weight, grad_bias, None, None, None, None, None, None, grad_step, grad_offset,
                None, None, None)


class FusedBatchNormAct2d(nn.BatchNorm2d):
    """A batch norm, its activation and the input quantizer of the one conv it feeds.

    Holds the batch norm's own parameters and buffers (same state-dict keys) and the
    activation module as ``act``; the conv (``consumer``, not a submodule) keeps its quantizer
    and takes this module's output as already quantized. In a step with gradients through an
    LSQ / LSQ+ quantizer (offset zero or learned) it runs :class:`BatchNormActQuant`; otherwise
    batch norm, ``act`` and the quantizer as separate modules, exactly as unfused."""

    def __init__(self, bn: nn.BatchNorm2d, act: nn.Module, consumer: QuantConv2d) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(self, name, getattr(bn, name))
        self.training = bn.training
        self.act = act
        self.activation = ACTIVATION_KINDS[type(act)]
        object.__setattr__(self, "consumer", consumer)  # not a submodule: its parent owns it
        consumer.input_fused = True

    def _fusable(self, x: torch.Tensor, quantizer: nn.Module) -> bool:
        return (torch.is_grad_enabled() and x.requires_grad and x.dim() == 4 and x.dtype == torch.float32
                and not torch.compiler.is_compiling()
                and isinstance(quantizer, LearnedStepQuantizer) and quantizer.has_fixed_grid())

    def _in_place(self, y: torch.Tensor, quantizer: nn.Module) -> bool:
        return (not (torch.is_grad_enabled() and y.requires_grad) and native.applies(y)
                and (y.is_contiguous() or y.is_contiguous(memory_format=torch.channels_last))
                and isinstance(quantizer, LearnedStepQuantizer) and quantizer.has_fixed_grid())

    def _evaluate(self, x: torch.Tensor, quantizer: nn.Module) -> torch.Tensor:
        """Batch norm, ``act`` and the quantizer as the unfused modules compute them; with the native
        ops and no gradient, the quantizer (and a ReLU or ReLU6) writes over the batch norm's output,
        which nothing else reads: the same numbers without one new tensor and pass per site."""
        y = super().forward(x)
        if not self._in_place(y, quantizer):
            return quantizer(self.act(y))
        if self.activation not in native.IN_PLACE_ACTIVATIONS:
            y = self.act(y)
            activation = "identity"
        else:
            activation = self.activation
        return native.learned_step_fake_quant_(y, quantizer.step, quantizer.offset, *quantizer.qrange, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantizer = self.consumer.input_quantizer
        if not self._fusable(x, quantizer):
            return self._evaluate(x, quantizer)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return BatchNormActQuant.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                       self.training, momentum, self.eps, self.activation, quantizer.floored_step(),
                                       quantizer.offset, *quantizer.qrange, quantizer.grad_scale(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused with the input quantizer of its next conv"


class _SiteTracer(fx.Tracer):
    """Batch norms (with timm's activation inside) and quantized layers as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.BatchNorm2d, QuantConv2d, QuantLinear)) or super().is_leaf_module(m, module_qualified_name)


def _plain_batch_norm(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats


def _site(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> tuple[str, str | None] | None:
    """(batch norm, separate activation module or None) whose output reaches the quantized conv
    ``node`` and nothing else, each module called once in the whole network; None if there is none."""
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return None
    module = modules[source.target]
    if isinstance(module, BatchNormAct2d):
        fits = (type(module.act) in ACTIVATION_KINDS and isinstance(module.drop, nn.Identity)
                and module.affine and module.track_running_stats)
        return (source.target, None) if fits and calls[source.target] == 1 else None
    if type(module) not in ACTIVATION_KINDS or calls[source.target] != 1:
        return None
    bn_node = source.args[0] if source.args else None
    if (not isinstance(bn_node, fx.Node) or bn_node.op != "call_module" or len(bn_node.users) != 1
            or not _plain_batch_norm(modules[bn_node.target]) or calls[bn_node.target] != 1):
        return None
    return bn_node.target, source.target


def fuse_activation_quantizers(model: nn.Module) -> list[str]:
    """Fuse every site of ``model`` (module docstring) in place; returns the fused batch norms'
    names. Raises ``RuntimeError`` when the model cannot be traced."""
    try:
        graph = _SiteTracer().trace(model)
    except Exception as err:
        raise RuntimeError(f"cannot trace {type(model).__name__} to fuse batch norms: {err}") from err
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], QuantConv2d):
            continue
        consumer = modules[node.target]
        site = _site(node, modules, calls) if isinstance(consumer.input_quantizer, Quantizer) else None
        if site is None:
            continue
        bn_name, act_name = site
        bn = modules[bn_name]
        act = bn.act if act_name is None else modules[act_name]
        _replace(model, bn_name, FusedBatchNormAct2d(bn, act, consumer))
        if act_name is not None:
            _replace(model, act_name, nn.Identity())
        fused.append(bn_name)
    return fused


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)
