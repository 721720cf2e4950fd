"""Learned step size quantization: LSQ (Esser et al., ICLR 2020) and its offset form (LSQ+).

Forward (LSQ eq. 1-2, LSQ+ eq. 3-4):   v̄ = ⌊clamp((v − β)/s, n, p)⌉,   v̂ = s·v̄ + β
with β = 0 for LSQ. Backward, straight-through on the rounding (LSQ eq. 3, LSQ+ eq. 5-6),
z = (v − β)/s:

    ∂v̂/∂v = 1 if n < z < p else 0
    ∂v̂/∂s = ⌊z⌉ − z if n < z < p;  n if z ≤ n;  p if z ≥ p
    ∂v̂/∂β = 0 if n < z < p else 1

and ∂L/∂s, ∂L/∂β are multiplied by the gradient scale g = 1/√(N·p) (LSQ section 2.2).
Forward and the three gradients are computed by one autograd Function, element-wise tensor
ops only, no host synchronisation.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.observer import Observation

STEP_MIN = 1e-8


class LearnedStepFakeQuant(torch.autograd.Function):
    """v̂ = s·⌊clamp((v − β)/s, n, p)⌉ + β with the LSQ / LSQ+ gradients (module docstring)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
                qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
        shifted = v - offset if offset is not None else v
        codes = torch.clamp(shifted / step, qmin, qmax).round_()
        out = codes.mul_(step)
        if offset is not None:
            out = out.add_(offset)
        ctx.save_for_backward(v, step, offset)
        ctx.qrange = (qmin, qmax, grad_scale)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        v, step, offset = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.qrange
        z = (v - offset if offset is not None else v) / step
        inside = (z > qmin) & (z < qmax)
        codes = torch.clamp(z, qmin, qmax).round_()
        # Outside the range the code is exactly n or p, so one expression covers all branches.
        dstep = codes.sub_(torch.where(inside, z, 0.0))
        grad_v = grad_out * inside
        grad_step = (grad_out * dstep).sum().mul_(grad_scale).reshape(step.shape)
        grad_offset = None
        if offset is not None:
            grad_offset = (grad_out.sum() - grad_v.sum()).mul_(grad_scale).reshape(offset.shape)
        return grad_v, grad_step, grad_offset, None, None, None


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """(n, p): signed [−2^(b−1), 2^(b−1)−1], unsigned [0, 2^b − 1] (LSQ section 2)."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class LearnedStepQuantizer(Quantizer):
    """Per-tensor learned-step quantizer (LSQ; with ``asymmetric`` the learned offset of LSQ+).

    Args:
        bits: bit-width b.
        signed: integer grid signed or unsigned; ``None`` decides at initialisation from the
            observed minimum (signed if any value is negative).
        asymmetric: learn an offset β (LSQ+); otherwise β = 0 (LSQ).
        init: ``lsq`` — s = 2·mean|v|/√p (LSQ section 2.1); further schemes belong to LSQ+.
        grad_scale: apply g = 1/√(N·p) to ∂L/∂s (and ∂L/∂β).
        per_example_numel: N counts the elements of one example (batch dimension excluded)
            instead of the whole tensor. Public LSQ code uses the whole tensor (the default);
            the paper's "number of features" can be read either way.

    The step is kept positive by construction: the forward uses max(s, 1e-8), and the gradient
    still reaches s when it is clamped, so a step pushed below the floor can recover.
    """

    def __init__(self, bits: int, signed: bool | None, asymmetric: bool = False,
                 init: str = "lsq", grad_scale: bool = True,
                 per_example_numel: bool = False) -> None:
        super().__init__(bits)
        if init not in self.INITS:
            raise ValueError(f"unknown init {init!r}; allowed: {', '.join(self.INITS)}")
        self.signed = signed
        self.asymmetric = asymmetric
        self.init = init
        self.use_grad_scale = grad_scale
        self.per_example_numel = per_example_numel
        self.step = nn.Parameter(torch.tensor(1.0))
        self.offset = nn.Parameter(torch.tensor(0.0)) if asymmetric else None

    INITS = ("lsq",)

    @property
    def qrange(self) -> tuple[int, int]:
        if self.signed is None:
            raise RuntimeError("quantizer signedness is decided at initialisation; initialise it first")
        return integer_range(self.bits, self.signed)

    def initialize(self, obs: Observation) -> None:
        if self.signed is None:
            self.signed = obs.min < 0
        _, qmax = self.qrange
        step = max(2.0 * obs.mean_abs / math.sqrt(qmax), STEP_MIN)
        with torch.no_grad():
            self.step.fill_(step)
            self.initialized.fill_(True)

    def grad_scale(self, v: torch.Tensor) -> float:
        if not self.use_grad_scale:
            return 1.0
        numel = v.numel() // v.shape[0] if self.per_example_numel and v.dim() > 1 else v.numel()
        return 1.0 / math.sqrt(numel * self.qrange[1])

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange
        step = self.step + (self.step.clamp_min(STEP_MIN) - self.step).detach()
        return LearnedStepFakeQuant.apply(v, step, self.offset, qmin, qmax, self.grad_scale(v))

    def get_extra_state(self) -> dict:
        return {"signed": self.signed}

    def set_extra_state(self, state: dict) -> None:
        self.signed = state["signed"]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, asymmetric={self.asymmetric}, init={self.init}"
