"""Model size: the integer model packed at the bits it uses, against float32.

Packed, each quantized layer stores its weight codes at b bits each, bit-packed
(⌈N·b/8⌉ bytes for N weights), one float32 scale per output channel (batch norm folded in:
s_w·g), one float32 bias per output channel, and its input grid's scale and offset (or zero
point) as two float32. Layers left in float and every other parameter and buffer stay float32.
The float32 model is every floating-point parameter and buffer of the float network (batch
norm included; the quantizers' own parameters are not part of it).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qbench.export.integer import LayerForm

FLOAT32 = 4
QUANTIZER_KEYS = ("weight_quantizer.", "input_quantizer.")


def packed_bytes(count: int, bits: int) -> int:
    """⌈count·bits/8⌉: ``count`` codes of ``bits`` bits packed back to back."""
    return math.ceil(count * bits / 8)


def float_elements(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Floating-point elements of ``model``'s parameters and buffers, the quantizers' excluded
    and those under the module names in ``skip``."""
    return sum(t.numel() for key, t in model.state_dict().items()
               if isinstance(t, torch.Tensor) and t.is_floating_point() and not any(k in key for k in QUANTIZER_KEYS)
               and not key.startswith(tuple(f"{name}." for name in skip)))


def model_size(model: nn.Module, forms: dict[str, LayerForm]) -> dict:
    """Packed bytes by part (weights, scales and zero points, biases, float rest) and in total,
    the float32 bytes of the float network, and their ratio, for the quantized ``model``."""
    weights = sum(packed_bytes(f.codes.numel(), f.weight_bits) for f in forms.values())
    grids = sum(FLOAT32 * (len(f.weight_scale) + 2) for f in forms.values())
    biases = sum(FLOAT32 * len(f.folded.bias) for f in forms.values())
    folded = tuple(forms) + tuple(f.folded.bn for f in forms.values() if f.folded.bn)
    rest = FLOAT32 * float_elements(model, folded)
    total = weights + grids + biases + rest
    float32 = FLOAT32 * float_elements(model)
    return {"packed_bytes": total, "float32_bytes": float32, "compression": round(float32 / total, 3),
            "parts": {"weights": weights, "scales_zero_points": grids, "biases": biases, "float_rest": rest},
            "weight_bits": sorted({f.weight_bits for f in forms.values()})}
