"""AdaRound (Nagel, Amjad, van Baalen, Louizos, Blankevoort; "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020): each weight learns whether it rounds down or up.

Grid: the signed b-bit uniform grid of round-to-nearest and Attention Round (codes n … p, step Δ
per output channel, :func:`qbench.quant.attention_round.weight_step`). A weight w is rounded to

    w̃ = Δ·clamp(⌊w/Δ⌋ + h(V), n, p)                                                   (1)

with one learned variable V per weight and the paper's rectified sigmoid (ζ = 1.1, γ = −0.1)

    h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)                                                (2)

which reaches 0 and 1 exactly, so a weight can settle on either neighbour. The rounding
regulariser of the paper pushes every h(V) to 0 or 1 as β anneals from 20 to 2:

    f_reg(V) = Σ_i 1 − |2·h(V_i) − 1|^β                                                  (3)

and the reconstruction minimises ‖W x − W̃ x̃‖² + λ·f_reg(V) unit by unit
(:mod:`qbench.quant.reconstruct`). At the end every weight is hard-rounded,

    ŵ = Δ·clamp(⌊w/Δ⌋ + [h(V) ≥ ½], n, p)                                               (4)

Initialisation (not the paper's, which leaves it open; the common choice of its public
implementations): V₀ = logit((r − γ)/(ζ − γ)) with r = w/Δ − ⌊w/Δ⌋ the fractional part, so
h(V₀) = r and the soft weight (1) starts at the float weight (clamped to the grid). Eq. (4)
at V₀ is round-half-up, ⌊w/Δ + ½⌋ clamped: round-to-nearest except at exact ties, which
``torch.round`` sends to the even code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, get_args

import torch
from torch import nn

from qbench.quant.attention_round import GridInit, weight_step
from qbench.quant.base import Quantizer
from qbench.quant.grid import integer_range

ZETA, GAMMA = 1.1, -0.1  # the stretch of the rectified sigmoid (2), the paper's values


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """Eq. (2): h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """V₀ with h(V₀) = ``fraction`` ∈ [0, 1): the inverse of eq. (2) inside its linear part."""
    p = (fraction - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1 - p))


def rounding_regulariser(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. (3): Σ 1 − |2h − 1|^β over every element of ``h``."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def annealed_beta(step: int, total: int, start: float, end: float, warmup: float) -> float | None:
    """β of eq. (3) at ``step`` of ``total``: ``None`` (no regulariser) during the first
    ``warmup`` fraction of the steps, then linear from ``start`` to ``end`` at the last step."""
    first = warmup * total
    if step < first:
        return None
    span = total - 1 - first
    return end if span <= 0 else start + (end - start) * (step - first) / span


class AdaRoundQuantizer(Quantizer):
    """Weights on a signed b-bit uniform grid, rounded down or up by AdaRound (module docstring).

    Args:
        bits: bit-width b.
        per_channel: one step Δ per output channel (else one per tensor).
        step_init: ``mse`` or ``minmax`` (:func:`~qbench.quant.attention_round.weight_step`);
            Δ stays fixed afterwards.

    :meth:`fit` sets Δ from the layer's weights and V₀ (module docstring); ``hard`` switches
    from the soft weight (1) to the hard rounding (4).
    """

    def __init__(self, bits: int, per_channel: bool = True, step_init: GridInit = "mse") -> None:
        super().__init__(bits)
        assert step_init in get_args(GridInit), step_init
        self.qmin, self.qmax = integer_range(bits, signed=True)
        self.per_channel, self.step_init = per_channel, step_init
        self.hard = False
        self.register_buffer("step", torch.tensor(1.0))
        self.register_parameter("v", None)

    def fit(self, weight: torch.Tensor) -> None:
        """Δ from ``weight`` and V₀ from the fractional part of w/Δ."""
        self.step = weight_step(weight, self.bits, self.per_channel, self.step_init)
        scaled = weight.detach() / self.step
        v = initial_v(scaled - torch.floor(scaled))
        self.v = nn.Parameter(v.contiguous())
        self.initialized = True

    def rounding(self) -> torch.Tensor:
        """h(V) of eq. (2)."""
        return rectified_sigmoid(self.v)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes of eq. (4)."""
        up = (self.rounding() >= 0.5).to(w.dtype)
        return torch.clamp(torch.floor(w / self.step) + up, self.qmin, self.qmax)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return self.codes(w) * self.step
        return self.step * torch.clamp(torch.floor(w / self.step) + self.rounding(), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, hard={self.hard}"


@dataclass(frozen=True)
class AdaRoundRule:
    """AdaRound as the rounding rule of :func:`qbench.quant.reconstruct.reconstruct`: V is
    learned, and each step adds λ·f_reg (eq. 3) at the annealed β (:func:`annealed_beta`),
    nothing during the warm-up or with λ = 0."""

    quantizer: ClassVar[type[Quantizer]] = AdaRoundQuantizer
    reg_lambda: float
    beta_start: float
    beta_end: float
    warmup: float

    def parameters(self, quantizers: list[AdaRoundQuantizer]) -> list[nn.Parameter]:
        return [q.v for q in quantizers]

    def step(self, quantizers: list[AdaRoundQuantizer], t: int, total: int) -> torch.Tensor | None:
        beta = annealed_beta(t, total, self.beta_start, self.beta_end, self.warmup)
        if beta is None or self.reg_lambda == 0:
            return None
        return self.reg_lambda * sum(rounding_regulariser(q.rounding(), beta) for q in quantizers)
