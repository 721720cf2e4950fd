"""The affine form of each uniform quantizer: x̂ = s·q + β with an integer code q ∈ [n, p].

Jacob et al. (CVPR 2018) write a quantized tensor as r = S·(q − Z) (eq. 1) with an integer
zero point Z. qbench's grids are that form with β = −S·Z, except LSQ+'s learned offset β, which
is any real number: the integer model keeps q and β apart and folds β·W·1 into the bias
(:mod:`qbench.export.layers`). A quantizer type registers the function that reads its form;
a quantizer without one (APoT's additive powers of two are not an affine grid) has no integer form.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qbench.quant.attention_round import AttentionRoundQuantizer
from qbench.quant.base import Quantizer
from qbench.quant.faq import FixedPointQuantizer
from qbench.quant.grid import STEP_MIN
from qbench.quant.lsq import LearnedStepQuantizer


class NoIntegerForm(ValueError):
    """A model (or one of its layers) cannot be written in integer arithmetic."""


@dataclass(frozen=True)
class Affine:
    """x̂ = scale·q + offset, q an integer in [qmin, qmax]; ``scale`` is a 0-d tensor or one
    value per output channel (shape (C,))."""

    scale: torch.Tensor
    offset: float
    qmin: int
    qmax: int

    @property
    def bits(self) -> int:
        return (self.qmax - self.qmin).bit_length()

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """q = clamp(⌊(x − β)/s⌉, n, p) as int32, computed as the fake quantizer computes it."""
        z = (x - self.offset) / self.scale.to(x.dtype) if self.offset else x / self.scale.to(x.dtype)
        return torch.clamp(z, self.qmin, self.qmax).round().to(torch.int32)


AffineReader = Callable[[Quantizer], Affine]
AFFINE_FORMS: dict[type[Quantizer], AffineReader] = {}


def affine_form(cls: type[Quantizer]) -> Callable[[AffineReader], AffineReader]:
    """Register the reader of ``cls``'s affine form."""
    def add(reader: AffineReader) -> AffineReader:
        AFFINE_FORMS[cls] = reader
        return reader
    return add


@affine_form(LearnedStepQuantizer)
def _learned_step(q: LearnedStepQuantizer) -> Affine:
    """LSQ eq. 1-2 / LSQ+ eq. 3-4: s = max(s, 1e-8) as the forward uses it, β the offset."""
    offset = 0.0 if q.offset is None else float(q.offset.detach())
    return Affine(q.step.detach().clamp_min(STEP_MIN).float().cpu(), offset, *q.qrange)


@affine_form(FixedPointQuantizer)
def _fixed_point(q: FixedPointQuantizer) -> Affine:
    """FAQ's Q_{b,l}: s = 2^l (or the evenly binned step), no offset."""
    return Affine(q.step.detach().float().cpu(), 0.0, *q.qrange)


@affine_form(AttentionRoundQuantizer)
def _attention_round(q: AttentionRoundQuantizer) -> Affine:
    """Attention Round eq. (4) after hard quantization: Δ per output channel (or per tensor)."""
    if not q.hard:
        raise NoIntegerForm("Attention Round weights are not hard-quantized yet (the run did not finish)")
    return Affine(q.step.detach().float().cpu().flatten().squeeze(), 0.0, q.qmin, q.qmax)


def read_affine(q: Quantizer, where: str) -> Affine:
    """The affine form of quantizer ``q`` (of layer ``where``); :class:`NoIntegerForm` when its
    type registered none."""
    reader = AFFINE_FORMS.get(type(q))
    if reader is None:
        raise NoIntegerForm(f"{type(q).__name__} of layer {where} has no affine form (scale·integer + offset); "
                            f"integer export covers {', '.join(sorted(c.__name__ for c in AFFINE_FORMS))}")
    return reader(q)


@torch.no_grad()
def weight_codes(q: Quantizer, weight: torch.Tensor, where: str) -> tuple[torch.Tensor, Affine]:
    """(integer codes of ``weight`` as int8, per-output-channel affine form): the codes are the
    fake-quantized weight divided by its step, so they are exactly what the simulation used
    (a tracked range is updated by this call, as in the simulation's forward)."""
    fake = q(weight.detach().float().cpu())
    form = read_affine(q, where)
    if form.offset:
        raise NoIntegerForm(f"layer {where}: weights with an offset are not supported")
    scale = form.scale.expand(weight.shape[0]).clone() if form.scale.dim() == 0 else form.scale
    shape = (-1,) + (1,) * (weight.dim() - 1)
    codes = torch.round(fake / scale.view(shape)).clamp(form.qmin, form.qmax).to(torch.int8)
    return codes, Affine(scale, 0.0, form.qmin, form.qmax)
