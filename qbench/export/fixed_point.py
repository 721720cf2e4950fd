"""Requantisation by an integer multiplier and a right shift (Jacob et al., CVPR 2018, section 2.2).

A real multiplier M (eq. 5: M = S₁S₂/S₃) is written M = M₀·2^(−shift) with |M₀| ∈ [2^30, 2^31),
an int32 (eq. 6 writes M = 2^(−n)·M₀ with M₀ ∈ [0.5, 1) in Q31 fixed point; M₀ here is that
value times 2^31). Multiplying an int32 accumulator by M is then one int64 product, an added
rounding constant and an arithmetic right shift: ⌊(acc·M₀ + c + 2^(shift−1)) / 2^shift⌋, i.e.
acc·M + c·2^(−shift) rounded half up. c carries a real output offset at the multiplier's
precision. The relative error of M₀·2^(−shift) against M is at most 2^(−31).
"""
from __future__ import annotations

import math

import torch

Q31 = 31
MAX_SHIFT = 62


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M₀, shift) with M ≈ M₀·2^(−shift), |M₀| ∈ [2^30, 2^31); M = 0 gives (0, 0). Raises
    ``ValueError`` for a multiplier outside what one int64 product can carry."""
    if m == 0:
        return 0, 0
    mantissa, exponent = math.frexp(m)  # m = mantissa·2^exponent, 0.5 ≤ |mantissa| < 1
    m0 = round(mantissa * (1 << Q31))
    if abs(m0) == 1 << Q31:  # the mantissa rounded up to 1.0
        m0 //= 2
        exponent += 1
    shift = Q31 - exponent
    if not 0 < shift <= MAX_SHIFT:
        raise ValueError(f"multiplier {m!r} is outside the range of a fixed-point multiplier with shift in (0, 62]")
    return m0, shift


def multipliers(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M₀, shift) per element of ``values`` (float64), as int64 tensors."""
    pairs = [quantize_multiplier(float(v)) for v in values.double().flatten()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).view(values.shape)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64).view(values.shape)
    return m0, shift


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
               constant: torch.Tensor | None = None) -> torch.Tensor:
    """⌊(acc·M₀ + c + 2^(shift−1)) / 2^shift⌋ in int64 (``acc`` int32, M₀/shift/c broadcast
    against it), returned as int64: acc·M + c·2^(−shift) rounded half up."""
    total = acc.to(torch.int64) * m0 + (torch.ones_like(shift) << (shift - 1))
    if constant is not None:
        total = total + constant
    return total >> shift
