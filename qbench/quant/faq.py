"""The fixed-point quantizer of FAQ (McKinstry et al., "Discovering Low-Precision Networks Close
to Full-Precision Networks for Efficient Embedded Inference", arXiv 1809.04191; EMC2 2019).

Forward, the quantizer Q_{b,l} (b bits, l the position of the least significant bit):

    Q_{b,l}(v) = 2^l · clamp(⌊v / 2^l⌉, n, p)
    (n, p) = (−2^(b−1), 2^(b−1) − 1) signed,  (0, 2^b − 1) unsigned

with ⌊·⌉ rounding half to even (``torch.round``). l comes from a range y: y is rounded up to a
power of two R = 2^⌈log₂ y⌉ and the b-bit grid spans [−R, R) (signed) or [0, R) (unsigned), so
l = ⌈log₂ y⌉ − (b − 1) signed, ⌈log₂ y⌉ − b unsigned (:func:`fixed_point_step`).
``power_of_two=False`` bins [−y, y) evenly instead (step y / 2^(b−1)): one reading of the weights'
"clipped at a multiple of their standard deviation, then evenly binned".

The range y is a statistic of the values the quantizer sees (:func:`range_statistic`):
``percentile`` — the q-th percentile of |v| (the paper's activation calibration: 99.99 at 8 bits,
99.9 at 4 bits); ``max`` — max |v|; ``std`` — a multiple of the standard deviation of v (the
paper's weights; the multiple is not given). |v| equals v for post-ReLU activations and suits the
symmetric grid of signed data.

Backward, straight-through estimator: ``ste="clipped"`` — ∂Q/∂v = 1 where n ≤ v/2^l ≤ p, 0 where
the clamp clips (the rounding is skipped, the clamp keeps its own derivative); ``ste="identity"``
— ∂Q/∂v = 1 everywhere. The step is a buffer, not learned. Element-wise tensor ops only; the
forward kernel is fused by :func:`qbench.quant.kernels.compile_kernels`.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from qbench.quant.base import Quantizer
from qbench.quant.grid import integer_range
from qbench.quant.kernels import flatten, kernel, memory_order, unflatten
from qbench.quant.observer import Observation

RANGE_MIN = 2.0**-40  # floor of a range (an all-zero input would give log₂ 0)
Statistic = Literal["percentile", "max", "std"]
STE = Literal["clipped", "identity"]


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (0 ≤ q ≤ 100) of ``values``, linear interpolation between order
    statistics: numpy's default method. Works beyond ``torch.quantile``'s size limit."""
    v = values.detach().flatten().double()
    position = q / 100.0 * (v.numel() - 1)
    below = int(position)
    lo = torch.kthvalue(v, below + 1).values
    hi = torch.kthvalue(v, min(below + 2, v.numel())).values
    return lo + (position - below) * (hi - lo)


def range_statistic(values: torch.Tensor, statistic: str, level: float) -> torch.Tensor:
    """The range y of ``values`` (0-d tensor): the ``level``-th percentile of |v|, max |v|, or
    ``level`` × the standard deviation of v."""
    if statistic == "percentile":
        return percentile(values.abs(), level)
    if statistic == "max":
        return values.detach().abs().max()
    if statistic == "std":
        return level * values.detach().std(correction=0)
    raise ValueError(f"unknown statistic {statistic!r}; allowed: {', '.join(get_args(Statistic))}")


def fixed_point_step(y: torch.Tensor, bits: int, signed: bool, power_of_two: bool = True) -> torch.Tensor:
    """The step 2^l of a b-bit grid whose range covers y: R = 2^⌈log₂ y⌉ (or y itself without
    ``power_of_two``), step = R / 2^(b−1) signed, R / 2^b unsigned."""
    y = torch.as_tensor(y, dtype=torch.float32).clamp_min(RANGE_MIN)
    bound = torch.exp2(torch.ceil(torch.log2(y))) if power_of_two else y
    return bound / 2 ** (bits - 1 if signed else bits)


@kernel
def _fixed_point_forward(v: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Q(v) = step·clamp(⌊v/step⌉, n, p)."""
    return torch.clamp(torch.round(v / step), qmin, qmax) * step


@kernel
def _clipped_backward(v: torch.Tensor, step: torch.Tensor, grad_out: torch.Tensor, qmin: int,
                      qmax: int) -> torch.Tensor:
    """∂L/∂v: ∂L/∂Q where the clamp leaves v/step alone (n ≤ v/step ≤ p), else 0; v/step
    recomputed exactly as the forward computed it."""
    z = v / step
    return torch.where((z >= qmin) & (z <= qmax), grad_out, 0.0)


class FixedPointFakeQuant(torch.autograd.Function):
    """Q_{b,l}(v) = step·clamp(⌊v/step⌉, n, p) with the straight-through gradient (module
    docstring): ``clipped`` passes ∂L/∂Q where the clamp does not clip, ``identity`` everywhere.
    The backward keeps the input itself (a view) and recomputes where the clamp clipped, as the
    LSQ backward does (:class:`qbench.quant.lsq.LearnedStepFakeQuant`): the forward kernel writes
    one float output and no mask (a boolean output measured 4–5× slower per call on this CPU)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                clipped: bool) -> torch.Tensor:
        order = memory_order(v)
        flat, step = flatten(v, order), step.detach()
        out = _fixed_point_forward(flat, step, qmin, qmax)
        if clipped:
            ctx.save_for_backward(flat, step)
        ctx.clipped, ctx.layout, ctx.qrange = clipped, (v.shape, order), (qmin, qmax)
        return unflatten(out, v.shape, order)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        if not ctx.clipped:
            return grad_out, None, None, None, None
        flat, step = ctx.saved_tensors
        shape, order = ctx.layout
        grad_v = _clipped_backward(flat, step, flatten(grad_out, order), *ctx.qrange)
        return unflatten(grad_v, shape, order), None, None, None, None


class FixedPointQuantizer(Quantizer):
    """FAQ's Q_{b,l} with its range from a statistic of the observed values.

    Args:
        bits: bit-width b.
        signed: signed or unsigned grid; ``None`` decides at initialisation (signed if any
            observed value is negative).
        statistic: ``percentile``, ``max`` or ``std`` (:func:`range_statistic`).
        level: the percentile q, or the multiple of the standard deviation.
        power_of_two: round the range up to a power of two (fixed point, the paper's activations).
        track: recompute the range from every input (weights: the current weights) instead of
            fixing it at initialisation.
        ste: ``clipped`` or ``identity`` straight-through gradient.
    """

    EXTRA_STATE = (*Quantizer.EXTRA_STATE, "signed")  # signedness may be decided at calibration

    def __init__(self, bits: int, signed: bool | None, statistic: Statistic, level: float = 0.0,
                 power_of_two: bool = True, track: bool = False, ste: STE = "clipped") -> None:
        super().__init__(bits)
        assert statistic in get_args(Statistic) and ste in get_args(STE), (statistic, ste)
        self.signed, self.statistic, self.level = signed, statistic, level
        self.power_of_two, self.track, self.ste = power_of_two, track, ste
        self.register_buffer("step", torch.tensor(1.0))
        self.initialized = track and signed is not None  # a tracked range needs no calibration

    @property
    def qrange(self) -> tuple[int, int]:
        if self.signed is None:
            raise RuntimeError("quantizer signedness is decided at initialisation; initialise it first")
        return integer_range(self.bits, self.signed)

    def observed_range(self, obs: Observation) -> torch.Tensor:
        if self.statistic == "max":
            return torch.tensor(max(abs(obs.min), abs(obs.max)))
        if self.statistic == "std":
            return torch.tensor(self.level * obs.std)
        return range_statistic(obs.sample_tensor(), self.statistic, self.level)

    def initialize(self, obs: Observation) -> None:
        if self.signed is None:
            self.signed = obs.min < 0
        step = fixed_point_step(self.observed_range(obs), self.bits, self.signed, self.power_of_two)
        with torch.no_grad():
            self.step.copy_(step)
            self.initialized = True

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange
        if self.track:
            with torch.no_grad():
                y = range_statistic(v, self.statistic, self.level)
                self.step.copy_(fixed_point_step(y, self.bits, self.signed, self.power_of_two))
        return FixedPointFakeQuant.apply(v, self.step, qmin, qmax, self.ste == "clipped")

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, statistic={self.statistic}({self.level}), "
                f"power_of_two={self.power_of_two}, track={self.track}, ste={self.ste}")
