"""The interface every quantizer module shares."""
from __future__ import annotations

import torch
from torch import nn

from qbench.quant.observer import Observation


class Quantizer(nn.Module):
    """A fake quantizer: calling it returns the de-quantized value of its input.

    Phases (torchao style): built from its config, then ``initialize`` from an
    :class:`Observation` (weights at prepare time, activations from calibration batches), then
    trained or frozen. Subclasses implement ``quantize`` and set ``initialized`` when their
    parameters are set. While ``observer`` is set the input is recorded; while ``enabled`` is
    false the input passes through unchanged (calibration runs the float network). Quantizing
    with a quantizer that was never initialised is an error, not a silent identity grid;
    ``initialized`` travels in the state dict (extra state), so a loaded checkpoint counts;
    subclasses add to :attr:`EXTRA_STATE` the plain attributes calibration decides.
    """

    EXTRA_STATE: tuple[str, ...] = ("initialized",)

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.enabled = True
        self.initialized = False
        self.observer: Observation | None = None

    def initialize(self, obs: Observation) -> None:
        raise NotImplementedError

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(v)
        if not self.enabled:
            return v
        if not self.initialized:
            raise RuntimeError(f"{type(self).__name__}({self.extra_repr()}) quantizes before it was "
                               "initialised: initialise it from data or load a checkpoint first")
        return self.quantize(v)

    def cache_attributes(self) -> tuple | None:
        """The plain attributes (bits, signedness, mode flags, ...) that, with its tensors, decide
        this quantizer's output for a given input; ``None`` while that output may not be reused
        (values are being observed, or the output is random). The eval fast path of
        :mod:`qbench.quant.layers` caches a quantized weight under them."""
        if self.observer is not None:
            return None
        return tuple((name, value) for name, value in vars(self).items()
                     if value is None or isinstance(value, (bool, int, float, str)))

    def get_extra_state(self) -> dict:
        return {name: getattr(self, name) for name in self.EXTRA_STATE}

    def set_extra_state(self, state: dict) -> None:
        for name in self.EXTRA_STATE:
            setattr(self, name, state[name])

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
