"""Attention Round (Diao, Li, Xu, Hao; arXiv 2207.03088, 2022): a weight may be rounded to any
level of its grid, with a probability that decays as a Gaussian of the distance.

The paper's abstract states the idea; its equations could not be read (papers.md §5.2), so the
form below is qbench's reading (papers.md §5.3). Grid: integer codes k ∈ {n, …, p}, signed
(n = −2^(b−1), p = 2^(b−1) − 1), step Δ per output channel (or per tensor). A weight w sits at
u = w/Δ + δ on the grid, δ learned from zero. Its attention over the levels is

    P(w → k) = exp(−(u − k)²/(2σ²)) / Σ_j exp(−(u − j)²/(2σ²))                       (1)

with the width σ in units of Δ. While the rounding is optimised the weight is the attention
read-out of the levels, the soft weight

    ŵ = Δ·E_P[k] = Δ·Σ_k P(w → k)·k,     ∂ŵ/∂u = Δ·Var_P[k]/σ²                        (2)

(``relaxation="expected"``), or one level drawn from (1), ŵ = Δ·k*, k* ~ P(w → ·), with the
gradient of (2) (``relaxation="sample"``, straight-through). σ is annealed geometrically,

    σ_t = σ_0·(σ_T/σ_0)^(t/T)                                                           (3)

and at the end every weight is hard-quantized to the most probable level of (1), its nearest:

    ŵ = Δ·clamp(⌊u⌉, n, p)                                                              (4)

``window`` bounds the work per weight: only the 2·window levels nearest u (⌊u⌋ − window + 1
… ⌊u⌋ + window, inside [n, p]) enter (1); ``None`` uses every level. Levels further
than window − 1 steps carry a mass below exp(−(window − 1)²/(2σ²)) (3·10⁻⁴ at window 3,
σ = 0.5), so the window changes (1) by less than that. The forward is one kernel
(:mod:`qbench.quant.kernels`), the backward the closed form of (2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.grid import STEP_MIN, integer_range
from qbench.quant.kernels import kernel

Relaxation = Literal["expected", "sample"]
Granularity = Literal["channel", "tensor"]  # one step per output channel, or per tensor
GridInit = Literal["mse", "minmax"]
CLIP_RATIOS = torch.linspace(0.3, 1.0, 15).tolist()  # clipping ratios searched by mse_step, step 0.05


def candidate_levels(u: torch.Tensor, qmin: int, qmax: int, window: int | None) -> torch.Tensor:
    """The levels that enter (1) for each element of ``u``: shape (K,) for every level of the
    grid, or ``u.shape + (2·window,)`` for the window around ⌊u⌋ (may reach outside [n, p])."""
    if window is None or 2 * window >= qmax - qmin + 1:
        return torch.arange(qmin, qmax + 1, dtype=u.dtype, device=u.device)
    base = torch.floor(torch.clamp(u.detach(), qmin, qmax))
    return base.unsqueeze(-1) + torch.arange(1 - window, window + 1, dtype=u.dtype, device=u.device)


def attention_probabilities(u: torch.Tensor, sigma: torch.Tensor | float, qmin: int, qmax: int,
                            window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, P): eq. (1) over the candidate levels (:func:`candidate_levels`); levels
    outside [n, p] get probability 0. ``P`` has shape ``u.shape + (K,)`` and sums to 1."""
    levels = candidate_levels(u, qmin, qmax, window)
    logits = -(u.unsqueeze(-1) - levels).square() / (2 * sigma * sigma)
    logits = torch.where((levels >= qmin) & (levels <= qmax), logits, -math.inf)
    return levels, torch.softmax(logits, dim=-1)


@kernel
def _attention_kernel(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, sigma: torch.Tensor,
                      qmin: int, qmax: int, window: int | None,
                      uniform: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŵ, ∂ŵ/∂δ) at u = v/Δ + δ: ŵ = Δ·E_P[k] (eq. 2), or with ``uniform`` draws in [0, 1) the
    level whose cumulative probability first exceeds the draw (a sample of eq. 1); ∂ŵ/∂δ =
    Δ·Var_P[k]/σ². The candidate levels are unrolled (a loop over the window, not over
    elements), and each weight is relative to the nearest level's, so the compiled kernel is one
    pass without a (…, K) intermediate and never underflows."""
    u = v / step + offset
    nearest = hard_codes(u, qmin, qmax)
    if window is None or 2 * window >= qmax - qmin + 1:
        base, offsets = torch.zeros_like(u), range(qmin, qmax + 1)
    else:
        base, offsets = torch.floor(torch.clamp(u, qmin, qmax)), range(1 - window, window + 1)
    sigma_sq = sigma * sigma
    total = first = second = torch.zeros_like(u)
    weights = []
    for j in offsets:
        level = base + j
        e = torch.exp(((u - nearest).square() - (u - level).square()) / (2 * sigma_sq))
        e = torch.where((level >= qmin) & (level <= qmax), e, 0.0)
        total, first, second = total + e, first + e * j, second + e * (j * j)
        weights.append(e)
    mean = first / total
    slope = step * (second / total - mean.square()).clamp_min(0.0) / sigma_sq
    if uniform is None:
        return step * (base + mean), slope
    cumulative = count = torch.zeros_like(u)
    for e in weights:
        cumulative = cumulative + e / total
        count = count + (cumulative < uniform).to(u.dtype)
    return step * torch.clamp(base + offsets[0] + count, qmin, qmax), slope


class AttentionRoundFn(torch.autograd.Function):
    """ŵ of eq. (2) (or a sample of eq. 1) from the weight v, step Δ and offset δ; the gradient
    reaches δ only (w and Δ stay fixed while the rounding is optimised): ∂ŵ/∂δ = Δ·Var_P[k]/σ²."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, sigma: torch.Tensor,
                qmin: int, qmax: int, window: int | None, uniform: torch.Tensor | None) -> torch.Tensor:
        out, slope = _attention_kernel(v.detach(), step.detach(), offset.detach(), sigma, qmin, qmax,
                                       window, uniform)
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        (slope,) = ctx.saved_tensors
        return None, None, grad_out * slope, None, None, None, None, None


def attention_round(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, sigma: float,
                    qmin: int, qmax: int, window: int | None = None, sample: bool = False) -> torch.Tensor:
    """The soft weight for optimisation, eq. (2) — or one draw of eq. (1) with ``sample`` —
    differentiable in the offset δ."""
    sigma_t = torch.tensor(sigma, dtype=v.dtype, device=v.device)
    uniform = torch.rand_like(v) if sample else None
    return AttentionRoundFn.apply(v, step, offset, sigma_t, qmin, qmax, window, uniform)


def hard_codes(u: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Eq. (4): the nearest level, the most probable one under eq. (1)."""
    return torch.clamp(torch.round(u), qmin, qmax)


def annealed_sigma(step: int, total: int, start: float, end: float) -> float:
    """Eq. (3): geometric decay from ``start`` at step 0 to ``end`` at step ``total`` − 1."""
    if total <= 1:
        return end
    return start * (end / start) ** (step / (total - 1))


@kernel
def _rounding_error_kernel(values: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Σ over each row of (Δ·clamp(⌊v/Δ⌉, n, p) − v)², ``values`` (rows, N), ``step`` (rows, 1)."""
    return (hard_codes(values / step, qmin, qmax) * step - values).square().sum(dim=1, keepdim=True)


@torch.no_grad()
def mse_step(values: torch.Tensor, full_step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Per row of ``values`` (rows, N): the step r·``full_step`` (rows, 1), r ∈ CLIP_RATIOS, that
    minimises the round-to-nearest error Σ (Δ·clamp(⌊v/Δ⌉, n, p) − v)²."""
    values = values.float()
    best_step, best_err = full_step, torch.full_like(full_step, math.inf)
    for ratio in CLIP_RATIOS:
        step = (full_step * ratio).clamp_min(STEP_MIN)
        err = _rounding_error_kernel(values, step, qmin, qmax)
        better = err < best_err
        best_err, best_step = torch.where(better, err, best_err), torch.where(better, step, best_step)
    return best_step


@torch.no_grad()
def weight_step(weight: torch.Tensor, bits: int, per_channel: bool, init: str) -> torch.Tensor:
    """Δ per output channel (or one Δ) of the signed b-bit grid, shaped to broadcast against
    ``weight``: ``minmax`` — the grid covers max |w|, Δ = max|w|/2^(b−1); ``mse`` — Δ = r·max|w|/
    2^(b−1), the clipping ratio r chosen per channel by :func:`mse_step`."""
    qmin, qmax = integer_range(bits, signed=True)
    w = weight.detach().reshape(weight.shape[0] if per_channel else 1, -1).float()
    step = (w.abs().amax(dim=1, keepdim=True) / 2 ** (bits - 1)).clamp_min(STEP_MIN)
    if init == "mse":
        step = mse_step(w, step, qmin, qmax)
    shape = (-1,) + (1,) * (weight.dim() - 1) if per_channel else ()
    return step.reshape(shape).to(weight.dtype)


class AttentionRoundQuantizer(Quantizer):
    """Weights on a signed b-bit uniform grid, rounded by Attention Round (module docstring).

    Args:
        bits: bit-width b.
        per_channel: one step Δ per output channel (else one per tensor).
        step_init: ``mse`` or ``minmax`` (:func:`weight_step`); Δ stays fixed afterwards.
        window: levels each side of ⌊u⌋ entering eq. (1); ``None`` for all levels.
        relaxation: ``expected`` (eq. 2) or ``sample`` (a draw of eq. 1).

    :meth:`fit` sets Δ from the layer's weights and creates δ (zeros); ``sigma`` is the current
    width of eq. (1), set by the optimiser's schedule; ``hard`` switches to eq. (4). With δ = 0
    and ``hard`` the quantizer is plain round-to-nearest on the same grid.
    """

    def __init__(self, bits: int, per_channel: bool = True, step_init: GridInit = "mse",
                 window: int | None = 3, relaxation: Relaxation = "expected") -> None:
        super().__init__(bits)
        assert step_init in get_args(GridInit) and relaxation in get_args(Relaxation), (step_init, relaxation)
        assert window is None or window >= 1, window
        self.qmin, self.qmax = integer_range(bits, signed=True)
        self.per_channel, self.step_init = per_channel, step_init
        self.window, self.relaxation = window, relaxation
        self.sigma = 0.5
        self.hard = False
        self.register_buffer("step", torch.tensor(1.0))
        self.register_parameter("offset", None)

    def fit(self, weight: torch.Tensor) -> None:
        """Δ from ``weight`` (:func:`weight_step`) and δ = 0."""
        self.step = weight_step(weight, self.bits, self.per_channel, self.step_init)
        self.offset = nn.Parameter(torch.zeros_like(weight.detach(), memory_format=torch.contiguous_format))
        self.initialized = True

    def latent(self, v: torch.Tensor) -> torch.Tensor:
        """u = w/Δ + δ."""
        return v / self.step + self.offset

    def codes(self, v: torch.Tensor) -> torch.Tensor:
        """The integer codes of eq. (4), after optimisation."""
        return hard_codes(self.latent(v), self.qmin, self.qmax)

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return self.codes(v) * self.step
        return attention_round(v, self.step, self.offset, self.sigma, self.qmin, self.qmax, self.window,
                               sample=self.relaxation == "sample")

    def cache_attributes(self) -> tuple | None:
        """``None`` while the weight is a random draw of eq. (1)."""
        if self.relaxation == "sample" and not self.hard:
            return None
        return super().cache_attributes()

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, per_channel={self.per_channel}, window={self.window}, "
                f"relaxation={self.relaxation}, hard={self.hard}")


@dataclass(frozen=True)
class AttentionRoundRule:
    """Attention Round as the rounding rule of :func:`qbench.quant.reconstruct.reconstruct`: the
    offsets δ are learned while σ anneals from ``sigma_start`` to ``sigma_end`` (eq. 3); no
    regulariser."""

    quantizer: ClassVar[type[Quantizer]] = AttentionRoundQuantizer
    sigma_start: float
    sigma_end: float

    def parameters(self, quantizers: list[AttentionRoundQuantizer]) -> list[nn.Parameter]:
        return [q.offset for q in quantizers]

    def step(self, quantizers: list[AttentionRoundQuantizer], t: int, total: int) -> None:
        sigma = annealed_sigma(t, total, self.sigma_start, self.sigma_end)
        for q in quantizers:
            q.sigma = sigma
