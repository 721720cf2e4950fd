"""The integer grid every uniform quantizer shares: its range and the smallest step allowed."""
from __future__ import annotations

STEP_MIN = 1e-8  # floor of a learned or fitted step: keeps division by the step finite


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """(n, p): signed [−2^(b−1), 2^(b−1)−1], unsigned [0, 2^b − 1] (LSQ section 2)."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
