"""The conversion policy: which layers are quantized, at which bits, sharing the float weights."""
import pytest
import torch

from qbench.methods import create_method
from qbench.models import MODELS, create_model
from qbench.phases import prepare
from qbench.quant import EdgeLayerPolicy, QuantConv2d, QuantLinear, plan_precision
from qbench.quant.calibrate import input_quantizers, quantizer_values, weight_quantizers
from qbench.quant.convert import quantizable_layers


def lsq_model(wbits=3, abits=2, first=EdgeLayerPolicy(), last=EdgeLayerPolicy(), skip=()):
    model = create_model("resnet18", 10, 1)
    plan = plan_precision(model, wbits, abits, "conv1", "fc", first, last, skip)
    return prepare(model, plan, create_method({"name": "lsq"})), plan


def test_edge_layers_at_8_bits_and_the_image_input_signed():
    model, plan = lsq_model()
    assert plan["conv1"].weight_bits == 8 and plan["conv1"].input_bits == 8
    assert plan["conv1"].input_signed is True
    assert plan["fc"].weight_bits == 8 and plan["fc"].input_bits == 8
    assert plan["layer1.0.conv1"].weight_bits == 3 and plan["layer1.0.conv1"].input_bits == 2
    wq, aq = weight_quantizers(model), input_quantizers(model)
    assert wq["conv1"].bits == 8 and aq["conv1"].signed is True
    assert wq["layer2.0.downsample.0"].bits == 3 and aq["layer2.0.downsample.0"].bits == 2
    assert aq["layer1.0.conv1"].signed is False  # LSQ: unsigned activations


def test_edge_layers_in_float_or_partly_float():
    model, plan = lsq_model(first=EdgeLayerPolicy(quantize=False),
                            last=EdgeLayerPolicy(weight_bits=4, input_bits=None))
    assert "conv1" not in plan and type(model.conv1) is torch.nn.Conv2d
    assert isinstance(model.fc, QuantLinear)
    assert isinstance(model.fc.input_quantizer, torch.nn.Identity)
    assert model.fc.weight_quantizer.bits == 4


def test_every_conv_and_linear_is_converted_and_shares_its_parameters():
    model = create_model("mobilenet_v2", 10, 1)
    weights = {n: m.weight for n, m in model.named_modules() if n in quantizable_layers(model)}
    spec = MODELS["mobilenet_v2"]
    plan = plan_precision(model, 4, 4, spec.first_layer, spec.last_layer, EdgeLayerPolicy(), EdgeLayerPolicy(),
                          skip=("features.1.conv.1",))
    prepare(model, plan, create_method({"name": "lsq"}))
    for name, m in model.named_modules():
        if name in weights and name != "features.1.conv.1":
            assert isinstance(m, (QuantConv2d, QuantLinear)), name
            assert m.weight is weights[name]
    assert type(model.get_submodule("features.1.conv.1")) is torch.nn.Conv2d


def test_unknown_layer_name_is_an_error():
    model = create_model("resnet18", 10, 1)
    with pytest.raises(ValueError, match="not a conv/linear layer"):
        plan_precision(model, 4, 4, "conv1", "fc", EdgeLayerPolicy(), EdgeLayerPolicy(), ("nope",))


def test_calibration_initialises_every_quantizer_from_float_inputs():
    model, _ = lsq_model(wbits=4, abits=4)
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    create_method({"name": "lsq"}).initialize(model, batches, train_mode=False)
    initial = quantizer_values(model)
    for name, q in {**weight_quantizers(model), **input_quantizers(model)}.items():
        assert q.initialized and q.step.item() > 0, name
    assert "conv1.input_quantizer" in initial
    # The image quantizer's step comes from the images: 2·mean|x|/√127.
    expected = 2 * torch.cat(batches).abs().mean().item() / 127**0.5
    assert model.conv1.input_quantizer.step.item() == pytest.approx(expected, rel=1e-4)


def test_unknown_method_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'; allowed: .*lsq"):
        create_method({"name": "nope"})
    with pytest.raises(ValueError, match="method.colour is not an option of method lsq"):
        create_method({"name": "lsq", "colour": 1})
    with pytest.raises(ValueError, match="method.act_signed='maybe' is not allowed for method lsq; use true, false or auto"):
        create_method({"name": "lsq", "act_signed": "maybe"})
