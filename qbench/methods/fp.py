"""The full-precision reference: the baseline network evaluated as it is."""
from __future__ import annotations

from qbench.methods.registry import Method, register_method


@register_method("fp", trains=False, quantizes=False)
class FullPrecision(Method):
    """No options, no quantizers: the FP row of every table."""
