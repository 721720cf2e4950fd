"""The interface every quantizer module shares."""
from __future__ import annotations

import torch
from torch import nn

from qbench.quant.observer import Observation


class Quantizer(nn.Module):
    """A fake quantizer: calling it returns the de-quantized value of its input.

    Phases (torchao style): built from its config, then ``initialize`` from an
    :class:`Observation` (weights at prepare time, activations from calibration batches), then
    trained or frozen. Subclasses implement ``quantize``. While ``observer`` is set the input is
    recorded; while ``enabled`` is false the input passes through unchanged (calibration runs
    the float network). ``initialized`` is a buffer, so a checkpoint records it.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 32:
            raise ValueError(f"bits must be in 2..32, got {bits}")
        self.bits = bits
        self.enabled = True
        self.observer: Observation | None = None
        self.register_buffer("initialized", torch.tensor(False))

    def initialize(self, obs: Observation) -> None:
        raise NotImplementedError

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(v)
        return self.quantize(v) if self.enabled else v

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
