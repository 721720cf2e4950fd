"""The int8 CPU model: torchao's PT2E flow with qbench's own scales and zero points.

``torch.export`` of a float *deploy model* → ``prepare_pt2e`` with ``X86InductorQuantizer``,
one quantization config per quantized layer whose observers return that layer's learned grid
(:class:`LearnedQParams`) → ``convert_pt2e`` (quantize / dequantize ops around each conv and
linear) → ``torch.compile`` with Inductor freezing, which lowers dequantize → conv → quantize
patterns to oneDNN int8 kernels. Grids below 8 bits run on int8 kernels (the quantize op clamps to
the grid's [0, 2^b − 1]); no CPU kernel computes at 2–4 bits.

The deploy model is the float skeleton (:mod:`qbench.export.fold`, every ReLU its own node) with
each quantized layer holding exactly the simulated values: weights s_w·g·q_w (batch norm's gain
g folded; its sign goes into the codes so each channel's scale |s_w·g| is positive), its input
shifted by −β (LSQ+: the grid becomes s·q with the integer zero point −n, Jacob et al. 2018 eq. 1)
and clamped to the grid's range [n·s, p·s] when it has fewer than 256 levels (Inductor's fused
int8 kernels requantize to the full uint8 range, not to the quantize op's [0, p − n]), and the
offset term β·(W ∗ 1) added back after the layer at the output's full shape (added with
broadcasting over the batch, Inductor's fused int8 conv + add gave wrong results on ResNet18 LSQ+:
92 % top-1 agreement on 64 images, 100 % once expanded). Only conv/linear inputs and weights are
quantized: the residual adds and pools stay float, as in qbench's simulation.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._inductor import config as inductor_config
from torchao.quantization.pt2e.observer import ObserverBase
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
)

from qbench.export.fold import skeleton
from qbench.export.integer import LayerForm, fold_float_layer, input_shapes, layer_forms

WEIGHT_RANGE = (-128, 127)


class DeployLayer(nn.Module):
    """A conv/linear layer computing g·(Ŵ ∗ x̂) + b' in float from x (module docstring)."""

    def __init__(self, layer: nn.Module, form: LayerForm, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        shape = (-1,) + (1,) * (form.codes.dim() - 1)
        scale = form.weight_scale.double() * form.folded.gain
        self.op = copy.deepcopy(layer)
        with torch.no_grad():
            self.op.weight = nn.Parameter((form.codes.double() * scale.view(shape)).float())
            self.op.bias = nn.Parameter(form.folded.bias.float())
        grid = form.input_form
        self.offset = grid.offset
        narrow = grid.qmax - grid.qmin < 255
        self.bounds = (grid.qmin * float(grid.scale), grid.qmax * float(grid.scale)) if narrow else None
        if self.offset:
            ones = torch.ones((1, *input_shape))
            weight = self.op.weight
            coverage = (F.conv2d(ones, weight, None, self.op.stride, self.op.padding, self.op.dilation,
                                 self.op.groups) if isinstance(layer, nn.Conv2d) else F.linear(ones, weight))
            self.register_buffer("offset_term", self.offset * coverage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            x = x - self.offset
        if self.bounds is not None:
            x = torch.clamp(x, *self.bounds)
        if not self.offset:
            return self.op(x)
        y = self.op(x)
        return y + self.offset_term.expand_as(y)  # full shape: Inductor's fused add mishandles a broadcast one


def deploy_model(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, dict[str, LayerForm]]:
    """(the deploy model of the quantized ``model``, its layers' forms)."""
    gm, folded = skeleton(model)
    forms = layer_forms(model, folded)
    shapes = input_shapes(gm, list(forms), example)
    for name, layer in dict(gm.named_modules()).items():
        if name in folded and name not in forms:
            fold_float_layer(layer, folded[name])
    for name, form in forms.items():
        deploy = DeployLayer(gm.get_submodule(name), form, shapes[name])
        gm.delete_submodule(name)
        gm.add_submodule(name, deploy)
    for node in gm.graph.nodes:  # the trace's module types are stale: torch.export records its own
        node.meta.pop("nn_module_stack", None)
    gm.recompile()
    return gm.eval(), forms


class LearnedQParams(ObserverBase):
    """An observer that observes nothing and returns a grid qbench learned: ``scale`` and
    ``zero_point`` (one value, or one per channel along ``ch_axis``)."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype, quant_min: int,
                 quant_max: int, qscheme: torch.qscheme, ch_axis: int = 0, is_dynamic: bool = False,
                 **unused: object) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.quant_min, self.quant_max, self.qscheme, self.ch_axis = quant_min, quant_max, qscheme, ch_axis
        self.register_buffer("scale", scale.float().clone())
        self.register_buffer("zero_point", zero_point.to(torch.int64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


def layer_config(form: LayerForm) -> QuantizationConfig:
    """The layer's input on uint8 [0, p − n] with scale s and zero point −n (after the −β shift),
    its weights on int8 per channel with scale |s_w·g| and zero point 0."""
    grid = form.input_form
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=grid.qmax - grid.qmin,
                           qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=LearnedQParams.with_args(
                               scale=grid.scale.reshape(1), zero_point=torch.tensor([-grid.qmin])))
    scale = (form.weight_scale.double() * form.folded.gain).abs()
    weight = QuantizationSpec(dtype=torch.int8, quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1],
                              qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=LearnedQParams.with_args(
                                  scale=scale, zero_point=torch.zeros(len(scale)), ch_axis=0))
    return QuantizationConfig(act, act, weight, None, is_qat=False)


def converted_model(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The PT2E reference model (quantize / dequantize ops carrying qbench's grids) of the
    quantized ``model``, before compilation."""
    deploy, forms = deploy_model(model, example)
    exported = torch.export.export(deploy, (example,)).module()
    quantizer = X86InductorQuantizer()
    for name, form in forms.items():
        quantizer.set_module_name_qconfig(name, layer_config(form))
    prepared = prepare_pt2e(exported, quantizer)
    prepared(example)
    return convert_pt2e(prepared)


class FixedBatch(nn.Module):
    """Runs a model compiled for one batch size on any smaller batch, padded with zeros (one
    compiled graph: a second shape would recompile, outside the freezing the first one had)."""

    def __init__(self, compiled: nn.Module, batch: int) -> None:
        super().__init__()
        self.compiled, self.batch = compiled, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == self.batch:
            return self.compiled(x)
        if len(x) > self.batch:
            return torch.cat([self(part) for part in x.split(self.batch)])
        padding = x.new_zeros((self.batch - len(x), *x.shape[1:]))
        return self.compiled(torch.cat([x, padding]))[: len(x)]


def int8_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The converted model compiled by Inductor with freezing (oneDNN int8 kernels on x86),
    for ``example``'s shape; other batch sizes run through :class:`FixedBatch`."""
    converted = converted_model(model, example)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        compiled = torch.compile(converted, dynamic=False)
        compiled(example)
    return FixedBatch(compiled, len(example))
