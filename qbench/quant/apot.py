"""Additive Powers-of-Two quantization, APoT (Li, Dong, Wang; ICLR 2020, arXiv 1909.13144).

Levels (section 2.2, eq. 5): each level is a sum of n terms, term i drawn from
{0, 2^−i, 2^−(i+n), …, 2^−(i+(2^k−2)n)}, base width k = 2, then scaled so the largest level is
1 (α scales it back). Odd widths add one 1-bit term, as the official code does. Weights are
signed: the sign takes one bit and the magnitudes are the (b−1)-bit set (2-bit weights: the
ternary {−1, 0, 1}, the paper's own special case, where PoT = uniform). Activations are
unsigned and use the b-bit set. ``levels=pot`` gives {0, 2^0, 2^−1, …, 2^−(2^B−2)} (rigid
resolution) and ``levels=uniform`` {0, 1/(2^B−1), …, 1}: the paper's ablation.

Forward (eq. 6 with the reparameterised clipping function, section 2.3):
    weights      ŵ = α·Π(clip(w̃/α, −1, 1)),  w̃ = (w − μ)/σ  (weight normalisation, section 2.4)
    activations  x̂ = α·Π(clip(x/α, 0, 1))
with Π the projection to the nearest level. Backward (eq. 7, RCF):
    ∂x̂/∂α = sign(x) if |x| > α,  Π(x/α) − x/α otherwise
    ∂x̂/∂x = 1 inside the clipping range, 0 outside (``grad_outside`` sets the weights' value
            outside: the official code passes 1 for 2-bit weights, its "calibrated gradient").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.kernels import flatten, kernel, memory_order, unflatten
from qbench.quant.observer import Observation

# Exponents of each additive term's non-zero values, per unsigned width B, before
# normalisation. B = 2..5 as the official code builds them (build_power_value); B = 6 from the
# paper's formula with k = 2, n = 3; B = 1 is {0, 1} (the magnitude of a ternary weight).
APOT_TERMS: dict[int, list[list[int]]] = {
    1: [[0]],
    2: [[1, 2, 3]],
    3: [[1, 2, 4], [3]],
    4: [[1, 3, 5], [2, 4, 6]],
    5: [[1, 3, 6], [2, 4, 7], [5]],
    6: [[0, 3, 6], [1, 4, 7], [2, 5, 8]],
}
LEVEL_KINDS = ("apot", "pot", "uniform")


def _unsigned_levels(width: int, kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.linspace(0, 1, 2**width, dtype=torch.float64)
    if kind == "pot":
        return torch.tensor([0.0] + [2.0**-j for j in range(2**width - 1)], dtype=torch.float64).sort().values
    if width not in APOT_TERMS:
        raise ValueError(f"APoT levels are defined for widths {min(APOT_TERMS)}..{max(APOT_TERMS)}, got {width}")
    sums = torch.zeros(1, dtype=torch.float64)
    for term in APOT_TERMS[width]:
        values = torch.tensor([0.0] + [2.0**-e for e in term], dtype=torch.float64)
        sums = (sums[:, None] + values[None, :]).flatten()
    levels = sums.unique()
    return levels / levels.max()


def apot_levels(bits: int, signed: bool, kind: str = "apot") -> torch.Tensor:
    """The sorted, normalised level set (largest level 1) of a ``bits``-bit quantizer.

    Signed: the sign takes one bit, the magnitudes are the (bits − 1)-bit unsigned set
    (2^bits − 1 levels). Unsigned: the bits-bit set (2^bits levels).
    """
    if kind not in LEVEL_KINDS:
        raise ValueError(f"unknown levels {kind!r}; allowed: {', '.join(LEVEL_KINDS)}")
    if not signed:
        return _unsigned_levels(bits, kind).float()
    magnitudes = _unsigned_levels(bits - 1, kind)
    return torch.cat([-magnitudes.flip(0)[:-1], magnitudes]).float()


def project_to_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The nearest element of sorted ``levels`` to each element of ``x`` (ties: the lower)."""
    midpoints = (levels[1:] + levels[:-1]) / 2
    return levels[torch.bucketize(x, midpoints)]


@kernel
def _rcf_forward(v: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor,
                 lo: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂, u = v/α, Π(clip(u))): the last two are kept for the backward."""
    u = v / alpha
    projected = project_to_levels(u.clamp(lo, 1.0), levels)
    return projected * alpha, u, projected


@kernel
def _rcf_backward(u: torch.Tensor, projected: torch.Tensor, grad_out: torch.Tensor, lo: float,
                  grad_outside: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂v, ∂L/∂α) by the RCF rule."""
    inside = (u >= lo) & (u <= 1.0)
    below_unsigned = (u < 0.0) & (lo == 0.0)
    grad_v = torch.where(inside, grad_out, torch.where(below_unsigned, 0.0, grad_out * grad_outside))
    # Outside the range Π(clip(u)) is lo or 1, which is ∂x̂/∂α there: one expression.
    dalpha = projected - torch.where(inside, u, 0.0)
    return grad_v, (grad_out * dalpha).sum()


class RCFQuantize(torch.autograd.Function):
    """α·Π(clip(v/α, lo, 1)) with the RCF gradients (module docstring); lo = −1 for a signed
    level set, 0 for an unsigned one. Kernels run on 1-D views (:mod:`qbench.quant.kernels`)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor, lo: float,
                grad_outside: float) -> torch.Tensor:
        order = memory_order(v)
        out, u, projected = _rcf_forward(flatten(v, order), alpha.detach(), levels, lo)
        ctx.save_for_backward(u, projected)
        ctx.params = (lo, grad_outside, v.shape, order)
        return unflatten(out, v.shape, order)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        u, projected = ctx.saved_tensors
        lo, grad_outside, shape, order = ctx.params
        grad_v, grad_alpha = _rcf_backward(u, projected, flatten(grad_out, order), lo, grad_outside)
        return unflatten(grad_v, shape, order), grad_alpha.reshape(()), None, None, None


class APoTQuantizer(Quantizer):
    """APoT / PoT / uniform levels with a learned clipping value α (RCF).

    Args:
        bits: bit-width b (levels: :func:`apot_levels`).
        signed: signed level set (weights) or unsigned (post-ReLU activations).
        levels: ``apot``, ``pot`` or ``uniform`` (the paper's ablation).
        alpha_init: initial α; the official code starts weights at 3.0 (in units of σ, after
            weight normalisation) and activations at 8.0.
        weight_norm: normalise the input to zero mean and unit variance first (section 2.4),
            inside the gradient path.
        grad_outside: ∂x̂/∂x outside the clipping range (0 as RCF; 1 for the official 2-bit
            weights' calibrated gradient). Unsigned values below 0 always get 0.
    """

    def __init__(self, bits: int, signed: bool, levels: str = "apot", alpha_init: float = 3.0,
                 weight_norm: bool = False, grad_outside: float = 0.0) -> None:
        super().__init__(bits)
        self.signed, self.kind = signed, levels
        self.weight_norm, self.grad_outside = weight_norm, grad_outside
        self.register_buffer("levels", apot_levels(bits, signed, levels), persistent=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def initialize(self, obs: Observation) -> None:
        with torch.no_grad():
            self.initialized.fill_(True)

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        if self.weight_norm:
            v = (v - v.mean()) / v.std()
        alpha = self.alpha.abs() + 1e-8
        return RCFQuantize.apply(v, alpha, self.levels, -1.0 if self.signed else 0.0, self.grad_outside)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, levels={self.kind}, weight_norm={self.weight_norm}"


class MaxScaledQuantizer(Quantizer):
    """Symmetric uniform weight quantizer scaled by the current max |w|: ŵ = s·⌊w/s⌉ with
    s = max|w|/(2^(b−1)−1), straight-through. The official APoT code quantizes the first and last
    layers' weights this way (8 bits)."""

    def initialize(self, obs: Observation) -> None:
        with torch.no_grad():
            self.initialized.fill_(True)

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        step = v.detach().abs().max().clamp_min(1e-12) / (2 ** (self.bits - 1) - 1)
        q = torch.round(v / step) * step
        return v + (q - v).detach()
