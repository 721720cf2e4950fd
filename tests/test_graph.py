"""Which layers read activation outputs and which read signed data (qbench.quant.graph)."""
import pytest
import torch
from torch import nn

from qbench.methods import create_method
from qbench.models import create_model
from qbench.phases import prepare
from qbench.quant import EdgeLayerPolicy, plan_precision
from qbench.quant.calibrate import input_quantizers
from qbench.quant.convert import quantizable_layers
from qbench.quant.graph import activation_fed_layers


class Toy(nn.Module):
    """Every kind of producer the walk-back must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.SiLU()
        self.after_act = nn.Conv2d(4, 4, 1)
        self.after_bn = nn.Conv2d(4, 4, 1)
        self.after_gate = nn.Conv2d(4, 4, 1)
        self.after_add = nn.Conv2d(4, 4, 1)
        self.after_pool = nn.Linear(4, 2)

    def forward(self, x):
        y = self.act(self.bn(self.stem(x)))
        a = self.after_act(y)
        b = self.after_bn(self.bn(a))
        gated = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        c = self.after_gate(gated)
        d = self.after_add(b + c)
        return self.after_pool(torch.flatten(torch.relu(d).mean((2, 3)), 1))


def test_walk_back_through_pooling_and_gates_but_not_bn_or_add():
    model = Toy()
    fed = activation_fed_layers(model, quantizable_layers(model))
    assert fed == {"after_act", "after_gate", "after_pool"}


@pytest.mark.parametrize("name, signed_data", [
    ("resnet18", {"conv1"}),
    ("efficientnet_b0", {"conv_stem", "blocks.1.0.conv_pw", "blocks.6.0.conv_pw", "conv_head"}),
    ("mixnet_s", {"conv_stem", "blocks.1.0.conv_pw.0", "blocks.1.0.conv_pw.1", "conv_head"}),
    ("mobilenet_v2", {"features.0.0", "features.2.conv.0.0", "features.18.0"}),
])
def test_signed_data_inputs_of_each_model(name, signed_data):
    model = create_model(name, 10, 1)
    layers = quantizable_layers(model)
    signed = set(layers) - activation_fed_layers(model, layers)
    assert signed_data <= signed
    # Depthwise convs, squeeze-excite convs and projections read activation outputs.
    assert not any(n.endswith(("conv_dw", "conv_reduce", "conv_expand", "conv_pwl")) for n in signed)
    if name == "resnet18":
        assert signed == {"conv1"}


def test_unsigned_config_keeps_residual_stream_signed():
    """LSQ's unsigned grid applies to activation outputs only: the input of an inverted-residual
    block's first 1×1 conv (signed data) gets a signed grid, its depthwise conv an unsigned one."""
    model = create_model("efficientnet_b0", 10, 1)
    plan = plan_precision(model, 4, 4, "conv_stem", "classifier", EdgeLayerPolicy(), EdgeLayerPolicy())
    model = prepare(model, plan, create_method({"name": "lsq"}))
    aq = input_quantizers(model)
    assert aq["blocks.1.0.conv_pw"].signed is True
    assert aq["blocks.1.0.conv_dw"].signed is False
    assert aq["classifier"].signed is False


def test_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(RuntimeError, match="cannot trace Branchy"):
        activation_fed_layers(Branchy(), ["conv"])
