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
direction into one loop.
"""
from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.grid import STEP_MIN, integer_range
from qbench.quant.kernels import flatten, kernel, memory_order, unflatten
from qbench.quant.observer import Observation


@kernel
def _forward_kernel(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
                    qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v̂, z) with z = (v − β)/s, kept for the backward."""
    z = (v - offset if offset is not None else v) / step
    out = torch.clamp(z, qmin, qmax).round() * step
    return (out + offset if offset is not None else out), z


@kernel
def _backward_kernel(z: torch.Tensor, grad_out: torch.Tensor, qmin: int,
                     qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂v, Σ ∂L/∂v̂·∂v̂/∂s, Σ ∂L/∂v̂·∂v̂/∂β) before the gradient scale."""
    inside = (z > qmin) & (z < qmax)
    grad_v = torch.where(inside, grad_out, 0.0)
    # Outside the range the code is exactly n or p, and so is ∂v̂/∂s.
    dstep = torch.where(inside, torch.round(z) - z, torch.clamp(z, qmin, qmax).round())
    return grad_v, (grad_out * dstep).sum(), torch.where(inside, 0.0, grad_out).sum()


Offset = Literal["zero", "learned", "xmin"]  # β: none, learned (LSQ+), the running minimum
StepInit = Literal["lsq", "minmax", "sigma3", "mse"]


class LearnedStepFakeQuant(torch.autograd.Function):
    """v̂ = s·⌊clamp((v − β)/s, n, p)⌉ + β with the LSQ / LSQ+ gradients (module docstring).

    The kernels run on 1-D views in the input's memory order; the output has the input's
    layout, and ∂L/∂v the layout of the input too.
    """

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
                qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
        order = memory_order(v)
        out, z = _forward_kernel(flatten(v, order), step.detach(),
                                 offset.detach() if offset is not None else None, qmin, qmax)
        ctx.save_for_backward(z, step, offset)
        ctx.qrange = (qmin, qmax, grad_scale)
        ctx.layout = (v.shape, order)
        return unflatten(out, v.shape, order)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        z, step, offset = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.qrange
        shape, order = ctx.layout
        grad_v, grad_step, grad_offset = _backward_kernel(z, flatten(grad_out, order), qmin, qmax)
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


def mse_step_offset(samples: torch.Tensor, step: float, offset: float, qmin: int, qmax: int,
                    learn_offset: bool, steps: int, lr: float) -> tuple[float, float]:
    """LSQ+ initialisation (section 3.3): (s, β) = argmin ‖x̂ − x‖², by Adam through the same
    straight-through gradients as training, starting from (``step``, ``offset``). The learning
    rate is relative to the starting step, so the fit does not depend on the data's scale."""
    x = samples.detach().double()
    s = torch.tensor(step, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(offset, dtype=torch.float64, requires_grad=learn_offset)
    opt = torch.optim.Adam([s, b] if learn_offset else [s], lr=lr * step)
    best = (float("inf"), step, offset)
    for _ in range(steps + 1):
        s_pos = s + (s.clamp_min(STEP_MIN) - s).detach()
        err = (LearnedStepFakeQuant.apply(x, s_pos, b if learn_offset else None, qmin, qmax, 1.0) - x).square().mean()
        if err.item() < best[0]:
            best = (err.item(), max(s.item(), STEP_MIN), b.item())
        opt.zero_grad()
        err.backward()
        opt.step()
    return best[1], best[2]


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
            |v| or of v (``sigma_of_abs``); ``mse`` — minimise ‖x̂ − x‖² from the min-max start
            (LSQ+ activations), ``mse_steps`` Adam steps at relative rate ``mse_lr``.
        grad_scale: apply g = 1/√(N·p) to ∂L/∂s and ∂L/∂β.
        per_example_numel: N counts the elements of one example (batch dimension excluded)
            instead of the whole tensor. Public LSQ code uses the whole tensor (the default);
            the paper's "number of features" can be read either way.

    The step is kept positive by construction: the forward uses max(s, 1e-8), and the gradient
    still reaches s when it is clamped, so a step pushed below the floor can recover.
    """

    EXTRA_STATE = (*Quantizer.EXTRA_STATE, "signed")  # signedness may be decided at calibration

    def __init__(self, bits: int, signed: bool | None, offset: Offset = "zero", init: StepInit = "lsq",
                 grad_scale: bool = True, per_example_numel: bool = False, sigma_of_abs: bool = True,
                 mse_steps: int = 200, mse_lr: float = 0.01) -> None:
        super().__init__(bits)
        assert init in get_args(StepInit) and offset in get_args(Offset), (init, offset)
        self.signed = signed
        self.offset_mode = offset
        self.init = init
        self.use_grad_scale = grad_scale
        self.per_example_numel = per_example_numel
        self.sigma_of_abs = sigma_of_abs
        self.mse_steps, self.mse_lr = mse_steps, mse_lr
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
        has_offset = self.offset_mode != "zero"
        if self.init == "lsq":
            step, offset = 2.0 * obs.mean_abs / math.sqrt(qmax), 0.0
        elif self.init == "sigma3":
            v = obs.sample_tensor().double()
            v = v.abs() if self.sigma_of_abs else v
            mu, sigma = v.mean().item(), v.std().item()
            step, offset = max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 2 ** (self.bits - 1), 0.0
        else:
            step, offset = minmax_step_offset(obs.min, obs.max, qmin, qmax, has_offset)
            if self.init == "mse":
                step, offset = mse_step_offset(obs.sample_tensor(), step, offset, qmin, qmax,
                                               self.offset_mode == "learned", self.mse_steps, self.mse_lr)
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
        numel = v.numel() // v.shape[0] if self.per_example_numel and v.dim() > 1 else v.numel()
        return 1.0 / math.sqrt(numel * self.qrange[1])

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange
        if self.offset_mode == "xmin" and self.training:
            with torch.no_grad():
                torch.minimum(self.offset, v.min(), out=self.offset)
        step = self.step + (self.step.clamp_min(STEP_MIN) - self.step).detach()
        return LearnedStepFakeQuant.apply(v, step, self.offset, qmin, qmax, self.grad_scale(v))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, offset={self.offset_mode}, init={self.init}"
