"""scripts/ablate_quantizers.py: its groups split the layers by role without overlap, and a
switched-off quantizer leaves its tensor in float."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from qbench import phases
from qbench.methods import create_method
from qbench.quant.calibrate import quantized_layers
from qbench.quant.convert import EdgeLayerPolicy, plan_precision

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablate_quantizers.py"
spec = importlib.util.spec_from_file_location("ablate_quantizers", SCRIPT)
ablate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablate)


def quantized_net() -> tuple[nn.Module, torch.Tensor]:
    """stem 3×3 → depthwise 3×3 → pointwise 1×1 (signed input: no ReLU before it) → 3×3 → linear, LSQ W4A4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    method = create_method({"name": "lsq"})
    plan = plan_precision(model, 4, 4, "0", "9", EdgeLayerPolicy(), EdgeLayerPolicy())
    model = phases.prepare(model, plan, method)
    x = torch.randn(64, 1, 8, 8)
    method.initialize(model, [x], False)
    method.finalize(model, [x])
    return model.eval(), x


def test_groups_split_the_layers_by_role_and_inputs_by_sign():
    model, _ = quantized_net()
    layers = quantized_layers(model)
    rows = ablate.ablations(model)
    weights = {name: {id(q) for q in rows[f"weights of {name}"]} for name in
               ("first layer", "last layer", "depthwise convs", "pointwise (1×1) convs", "other convs and linear layers")}
    assert weights["first layer"] == {id(layers["0"].weight_quantizer)}
    assert weights["last layer"] == {id(layers["9"].weight_quantizer)}
    assert weights["depthwise convs"] == {id(layers["2"].weight_quantizer)}
    assert weights["pointwise (1×1) convs"] == {id(layers["3"].weight_quantizer)}
    assert weights["other convs and linear layers"] == {id(layers["5"].weight_quantizer)}
    assert len(rows["weights of every layer"]) == 5
    signed = {id(q) for q in rows["inputs on a signed grid"]}
    unsigned = {id(q) for q in rows["inputs on an unsigned grid"]}
    assert not signed & unsigned and len(signed | unsigned) == 5
    assert id(layers["3"].input_quantizer) in signed and id(layers["5"].input_quantizer) in unsigned
    assert rows["none (the run as trained)"] == []


def test_a_switched_off_group_leaves_its_tensors_in_float():
    model, x = quantized_net()
    rows = ablate.ablations(model)
    with torch.no_grad():
        quantized = model(x)
        for q in rows["weights of every layer"] + rows["inputs of every layer"]:
            q.enabled = False
        switched_off = model(x)
        plain = x
        for m in model:  # the same network with plain float ops
            if isinstance(m, nn.Conv2d):
                plain = nn.functional.conv2d(plain, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, nn.Linear):
                plain = nn.functional.linear(plain, m.weight, m.bias)
            else:
                plain = m(plain)
    assert not torch.allclose(quantized, switched_off)
    assert torch.allclose(switched_off, plain, atol=1e-6)
