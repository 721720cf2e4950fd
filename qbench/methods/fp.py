"""The full-precision reference: the baseline network evaluated as it is."""
from __future__ import annotations

from dataclasses import dataclass

from qbench.methods.registry import Method, register_method


@register_method("fp")
class FullPrecision(Method):
    quantizes = False

    @dataclass
    class Config:
        pass
