"""Learned step size quantization: LSQ (Esser et al., ICLR 2020) and its offset form (LSQ+).

Forward (LSQ eq. 1-2, LSQ+ eq. 3-4):   v̄ = ⌊clamp((v − β)/s, n, p)⌉,   v̂ = s·v̄ + β
with β = 0 for LSQ. Backward, straight-through on the rounding (LSQ eq. 3, LSQ+ eq. 5-6),
z = (v − β)/s:

    ∂v̂/∂v = 1 if n < z < p else 0
    ∂v̂/∂s = ⌊z⌉ − z if n < z < p;  n if z ≤ n;  p if z ≥ p
    ∂v̂/∂β = 0 if n < z < p else 1

and ∂L/∂s, ∂L/∂β are multiplied by the gradient scale g = 1/√(N·p) (LSQ section 2.2).
Forward and the three gradients are computed by one autograd Function, element-wise tensor
ops only, no host synchronisation; :func:`qbench.quant.kernels.compile_kernels` fuses each
direction into one loop. With ``runtime.native_kernels`` a CPU float32 tensor takes one C++ op
instead (:mod:`qbench.quant.native`), the same math.
"""
from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import nn

from qbench.distributed import current_world
from qbench.quant import native
from qbench.quant.base import Quantizer
from qbench.quant.grid import STEP_MIN, integer_range
from qbench.quant.kernels import flatten, kernel, memory_order, unflatten
from qbench.quant.observer import Observation


def _scaled(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """z = (v − β)/s, the same operations in the forward and the backward kernel."""
    return (v - offset if offset is not None else v) / step


def fake_quantize(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
                  qmin: int, qmax: int) -> torch.Tensor:
    """v̂ = s·⌊clamp(z, n, p)⌉ + β (element-wise; kernels build on it)."""
    out = torch.clamp(_scaled(v, step, offset), qmin, qmax).round() * step
    return out + offset if offset is not None else out


def fake_quantize_grads(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, grad_out: torch.Tensor,
                        qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂v, Σ ∂L/∂v̂·∂v̂/∂s, Σ ∂L/∂v̂·∂v̂/∂β) before the gradient scale, with z recomputed
    from v exactly as :func:`fake_quantize` computed it."""
    z = _scaled(v, step, offset)
    inside = (z > qmin) & (z < qmax)
    grad_v = torch.where(inside, grad_out, 0.0)
    # Outside the range the code is exactly n or p, and so is ∂v̂/∂s.
    dstep = torch.where(inside, torch.round(z) - z, torch.clamp(z, qmin, qmax).round())
    return grad_v, (grad_out * dstep).sum(), torch.where(inside, 0.0, grad_out).sum()


_forward_kernel = kernel(fake_quantize)
_backward_kernel = kernel(fake_quantize_grads)


Offset = Literal["zero", "learned", "xmin"]  # β: none, learned (LSQ+), the running minimum
StepInit = Literal["lsq", "minmax", "sigma3", "mse"]


class LearnedStepFakeQuant(torch.autograd.Function):
    """v̂ = s·⌊clamp((v − β)/s, n, p)⌉ + β with the LSQ / LSQ+ gradients (module docstring).

    The kernels run on 1-D views in the input's memory order; the output has the input's
    layout, and ∂L/∂v the layout of the input too. The backward keeps the input ``v`` itself
    (a view of it, where it is dense in its memory order), not a float ``z`` of its size: ``v`` is
    often held anyway (a weight, the output a ReLU keeps for its own backward), and the backward
    recomputes z from it bit for bit. An in-place change of ``v`` before the backward is then
    autograd's usual error, never a silently wrong gradient.
    """

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
                qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
        order = memory_order(v)
        flat = flatten(v, order)
        step, offset = step.detach(), offset.detach() if offset is not None else None
        out = _forward_kernel(flat, step, offset, qmin, qmax)
        ctx.save_for_backward(flat, step, offset)
        ctx.qrange = (qmin, qmax, grad_scale)
        ctx.layout = (v.shape, order)
        return unflatten(out, v.shape, order)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        flat, step, offset = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.qrange
        shape, order = ctx.layout
        grad_v, grad_step, grad_offset = _backward_kernel(flat, step, offset, flatten(grad_out, order), qmin, qmax)
        grad_v = unflatten(grad_v, shape, order)
        grad_step = (grad_step * grad_scale).reshape(step.shape)
        if offset is not None:
            grad_offset = (grad_offset * grad_scale).reshape(offset.shape)
        else:
            grad_offset = None
        return grad_v, grad_step, grad_offset, None, None, None


def minmax_step_offset(lo: float, hi: float, qmin: int, qmax: int, with_offset: bool) -> tuple[float, float]:
    """Min-max initialisation (LSQ+ section 3.3): with an offset the grid spans [lo, hi]
    exactly, s = (hi − lo)/(p − n), β = lo − n·s; without one, s is the smallest step whose grid
    covers both ends, s = max(hi/p, lo/n)."""
    if with_offset:
        step = (hi - lo) / (qmax - qmin)
        return max(step, STEP_MIN), lo - qmin * max(step, STEP_MIN)
    candidates = [hi / qmax] + ([lo / qmin] if qmin < 0 else [])
    return max(max(candidates), STEP_MIN), 0.0


class SortedSamples:
    """Samples sorted, with prefix sums of v and v², so that the squared error of any uniform
    grid {m + s·k : k = 0..K−1} on all of them costs K binary searches instead of a pass."""

    def __init__(self, samples: torch.Tensor) -> None:
        self.values = samples.detach().double().flatten().sort().values
        zero = self.values.new_zeros(1)
        self.sum = torch.cat([zero, self.values.cumsum(0)])
        self.sum_sq = torch.cat([zero, self.values.square().cumsum(0)])

    def bins(self, low: torch.Tensor, step: torch.Tensor,
             levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, Σv, Σv²) of the samples that round to each level of each grid; ``low`` and
        ``step`` are (G,) tensors of G grids, the results (G, levels)."""
        k = torch.arange(levels - 1, dtype=torch.float64)
        edges = torch.searchsorted(self.values, low[:, None] + step[:, None] * (k + 0.5))
        edges = torch.cat([edges.new_zeros(len(low), 1), edges, edges.new_full((len(low), 1), len(self.values))], 1)
        return edges.diff(dim=1).double(), self.sum[edges].diff(dim=1), self.sum_sq[edges].diff(dim=1)

    def mse(self, low: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
        """Mean of (v̂ − v)² over the samples for each grid, Σ_k Σv² − 2ℓ_k·Σv + count·ℓ_k²."""
        count, total, total_sq = self.bins(low, step, levels)
        level = low[:, None] + step[:, None] * torch.arange(levels, dtype=torch.float64)
        return (total_sq - 2 * level * total + count * level.square()).sum(1) / len(self.values)


def _scalar(value: float) -> torch.Tensor:
    """A one-grid batch for :class:`SortedSamples`."""
    return torch.tensor([value], dtype=torch.float64)


def _candidate_grids(data: SortedSamples, qmin: int, qmax: int, offset: float | None,
                     size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, s) of the coarse search: with a learned offset, the low end m at the sample quantiles
    q = ½(i/size)², i = 0..size (dense near the minimum, where clipping a few outliers pays),
    and the high end at m + (max − m)·j/size, j = 1..size; with β fixed, s = s_max·j/size²,
    j = 1..size², s_max the min-max step of that β. Both include the min-max grid."""
    lo, hi = data.values[0].item(), data.values[-1].item()
    if offset is None:
        q = 0.5 * (torch.arange(size + 1, dtype=torch.float64) / size).square()
        lows = data.values[(q * (len(data.values) - 1)).round().long()]
        fraction = torch.arange(1, size + 1, dtype=torch.float64) / size
        low = lows[:, None].expand(-1, size).flatten()
        return low, ((hi - lows[:, None]) * fraction / (qmax - qmin)).flatten()
    step_max = max([(hi - offset) / qmax] + ([(lo - offset) / qmin] if qmin < 0 else []) + [STEP_MIN])
    step = step_max * torch.arange(1, size * size + 1, dtype=torch.float64) / size**2
    return offset + qmin * step, step


def _least_squares_grid(data: SortedSamples, low: float, step: float, qmin: int, qmax: int,
                        offset: float | None) -> tuple[float, float] | None:
    """One Lloyd step: keep each sample's level k and re-fit the grid to v ≈ m + s·k (learned
    offset) or v ≈ β + s·(n + k) (β fixed) by least squares; None where the fit is degenerate
    (all samples on one level)."""
    count, total, _ = data.bins(_scalar(low), _scalar(step), qmax - qmin + 1)
    count, total = count[0], total[0]
    k = torch.arange(qmax - qmin + 1, dtype=torch.float64)
    if offset is None:
        n, sk, skk = count.sum(), (k * count).sum(), (k * k * count).sum()
        det = (n * skk - sk * sk).item()
        if det <= 0:
            return None
        sv, skv = total.sum(), (k * total).sum()
        return ((skk * sv - sk * skv) / det).item(), ((n * skv - sk * sv) / det).item()
    k = k + qmin
    skk = (k * k * count).sum().item()
    if skk <= 0:
        return None
    fitted = max(((k * (total - offset * count)).sum() / skk).item(), STEP_MIN)
    return offset + qmin * fitted, fitted


def mse_step_offset(samples: torch.Tensor, qmin: int, qmax: int, offset: float | None,
                    steps: int, grid: int) -> tuple[float, float]:
    """LSQ+ activation initialisation (section 3.3): (s, β) = argmin ‖x̂ − x‖² over the samples,
    β learned (``offset`` None) or fixed to ``offset``.

    The paper says only "minimise the MSE", by gradient steps through the STE gradients (eq. 5-6).
    That fit, Adam from the min-max start, does not reach the minimum, so this departs from it.
    Inside the range the STE derivative of (v̂ − v)² w.r.t. s is 2(v̂ − v)(⌊z⌉ − z) = 2(v̂ − v)²/s,
    where the true one is 2(v̂ − v)·⌊z⌉, so its fixed point is biased; and in (s, β) a signed
    grid must move β by 2^(b−1)·Δs when s shrinks, more than a few hundred small steps allow.
    Instead, exactly on the samples (:class:`SortedSamples`):

    1. The grid is written by its lowest level, {m + s·k : k = 0..p − n}, m = β + n·s, so
       signed and unsigned asymmetric grids (LSQ+ configs 3 and 4) are one problem.
    2. A coarse search over ``grid``² grids (:func:`_candidate_grids`) picks the best start.
    3. At most ``steps`` Lloyd steps (:func:`_least_squares_grid`) refine it; each keeps the
       levels the samples round to and re-fits (m, s) by least squares, so the error never rises.
       They stop when it no longer falls; where the levels stop changing, the least-squares
       conditions are those of a stationary point of the true MSE.

    On 2^14 ReLU- and Swish-like samples this is within 1 % of a brute-force optimum over (s, β)
    for all four LSQ+ configurations at 2-4 bits (tests/test_lsqplus_init.py).
    """
    data = SortedSamples(samples)
    levels = qmax - qmin + 1
    lows, step_grid = _candidate_grids(data, qmin, qmax, offset, grid)
    errors = data.mse(lows, step_grid, levels)
    best = int(errors.argmin())
    err, low, step = errors[best].item(), lows[best].item(), step_grid[best].item()
    for _ in range(steps):
        fitted = _least_squares_grid(data, low, step, qmin, qmax, offset)
        if fitted is None:
            break
        new_err = data.mse(_scalar(fitted[0]), _scalar(fitted[1]), levels).item()
        if new_err >= err:
            break
        err, (low, step) = new_err, fitted
    step = max(step, STEP_MIN)
    return step, (low - qmin * step if offset is None else offset)


class LearnedStepQuantizer(Quantizer):
    """Per-tensor learned-step quantizer: LSQ, and with an offset β the LSQ+ quantizer.

    Args:
        bits: bit-width b.
        signed: integer grid signed or unsigned; ``None`` decides at initialisation from the
            observed minimum (signed if any value is negative).
        offset: ``zero`` — β = 0 (LSQ, symmetric); ``learned`` — β a parameter trained with
            the LSQ+ gradient (asymmetric); ``xmin`` — β fixed to the running minimum of the
            inputs (calibration, then every training batch), no gradient (LSQ+ Table 6).
        init: ``lsq`` — s = 2·mean|v|/√p, β = 0 (LSQ section 2.1); ``minmax`` — the grid spans
            [min, max]; ``sigma3`` — s = max(|μ − 3σ|, |μ + 3σ|)/2^(b−1) (LSQ+ weights), μ, σ of
            |v| or of v (``sigma_of_abs``); ``mse`` — minimise ‖x̂ − x‖² over the observed
            samples (LSQ+ activations), β learned or held at 0 or at the minimum (``xmin``): a
            coarse search over ``mse_grid``² grids, then at most ``mse_steps`` least-squares
            (Lloyd) steps. This departs from the paper's gradient fit through the STE gradients
            from the min-max start, which stops short of the minimum (:func:`mse_step_offset`).
        grad_scale: apply g = 1/√(N·p) to ∂L/∂s and ∂L/∂β.
        per_example_numel: N counts the elements of one example (batch dimension excluded)
            instead of the whole tensor. Public LSQ code uses the whole tensor (the default);
            the paper's "number of features" can be read either way.
        batch_split: the input is a batch that data-parallel ranks split (a layer input, not a
            weight): N counts the whole global batch — the rank's slice times the world size —
            so the scale under torchrun is the single process's (DDP averages the ranks' gradients).

    The step is kept positive by construction: the forward uses max(s, 1e-8), and the gradient
    still reaches s when it is clamped, so a step pushed below the floor can recover.
    """

    EXTRA_STATE = (*Quantizer.EXTRA_STATE, "signed")  # signedness may be decided at calibration

    def __init__(self, bits: int, signed: bool | None, offset: Offset = "zero", init: StepInit = "lsq",
                 grad_scale: bool = True, per_example_numel: bool = False, sigma_of_abs: bool = True,
                 mse_steps: int = 200, mse_grid: int = 32, batch_split: bool = False) -> None:
        super().__init__(bits)
        assert init in get_args(StepInit) and offset in get_args(Offset), (init, offset)
        self.signed = signed
        self.offset_mode = offset
        self.init = init
        self.use_grad_scale = grad_scale
        self.per_example_numel = per_example_numel
        self.ranks = current_world().size if batch_split else 1  # ranks sharing each batch
        self.sigma_of_abs = sigma_of_abs
        self.mse_steps, self.mse_grid = mse_steps, mse_grid
        self.step = nn.Parameter(torch.tensor(1.0))
        if offset == "learned":
            self.offset = nn.Parameter(torch.tensor(0.0))
        elif offset == "xmin":
            self.register_buffer("offset", torch.tensor(0.0))
        else:
            self.offset = None

    @property
    def qrange(self) -> tuple[int, int]:
        if self.signed is None:
            raise RuntimeError("quantizer signedness is decided at initialisation; initialise it first")
        return integer_range(self.bits, self.signed)

    def initial_values(self, obs: Observation) -> tuple[float, float]:
        """(s₀, β₀) for this quantizer's ``init`` and offset mode from the observed values."""
        qmin, qmax = self.qrange
        if self.init == "lsq":
            step, offset = 2.0 * obs.mean_abs / math.sqrt(qmax), 0.0
        elif self.init == "sigma3":
            v = obs.sample_tensor().double()
            v = v.abs() if self.sigma_of_abs else v
            mu, sigma = v.mean().item(), v.std().item()
            step, offset = max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 2 ** (self.bits - 1), 0.0
        elif self.init == "mse":
            fixed = {"learned": None, "zero": 0.0, "xmin": obs.min}[self.offset_mode]
            step, offset = mse_step_offset(obs.sample_tensor(), qmin, qmax, fixed, self.mse_steps, self.mse_grid)
        else:
            step, offset = minmax_step_offset(obs.min, obs.max, qmin, qmax, self.offset_mode != "zero")
        if self.offset_mode == "xmin":
            offset = obs.min
        return max(step, STEP_MIN), offset

    def initialize(self, obs: Observation) -> None:
        if self.signed is None:
            self.signed = obs.min < 0
        step, offset = self.initial_values(obs)
        with torch.no_grad():
            self.step.fill_(step)
            if self.offset is not None:
                self.offset.fill_(offset)
            self.initialized = True

    def grad_scale(self, v: torch.Tensor) -> float:
        if not self.use_grad_scale:
            return 1.0
        numel = v.numel() // v.shape[0] if self.per_example_numel and v.dim() > 1 else v.numel() * self.ranks
        return 1.0 / math.sqrt(numel * self.qrange[1])

    def has_fixed_grid(self) -> bool:
        """Whether a call quantizes with the parameters alone: enabled, initialised, not observing,
        and β not taken from the data (``xmin``); the fused and native fast paths need this."""
        return self.enabled and self.initialized and self.observer is None and self.offset_mode != "xmin"

    def floored_step(self) -> torch.Tensor:
        """max(s, 1e-8) as the forward uses it, with the gradient passed straight to s."""
        return self.step + (self.step.clamp_min(STEP_MIN) - self.step).detach()

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        if self.offset_mode == "xmin" and self.training:
            with torch.no_grad():
                torch.minimum(self.offset, v.min(), out=self.offset)
        if native.applies(v):
            return native.learned_step_fake_quant(v, self.step, self.offset, *self.qrange, self.grad_scale(v))
        return LearnedStepFakeQuant.apply(v, self.floored_step(), self.offset, *self.qrange, self.grad_scale(v))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, offset={self.offset_mode}, init={self.init}"


def floored_steps(model: nn.Module) -> list[str]:
    """The learned-step quantizers of ``model`` whose step parameter is at or below the floor
    (1e-8), by module name: training drove s through zero, the forward uses the floor, and that
    tensor is quantized to at most p steps of about 1e-8, i.e. zero. A record lists them
    (``steps_at_floor``), so that a cell whose layers went dead says so instead of passing for
    a method effect."""
    return sorted(name for name, m in model.named_modules()
                  if isinstance(m, LearnedStepQuantizer) and m.step.item() <= STEP_MIN)
