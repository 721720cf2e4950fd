"""LSQ+: Improving low-bit quantization through learnable offsets and better initialization
(Bhalgat, Lee, Nagel, Blankevoort, Kwak; CVPR-W 2020, arXiv 2004.09576).

Weights: signed, symmetric learned-step quantizers, as LSQ. Activations (the input of every
quantized conv/linear, where Swish networks feed negative values): x̂ = s·⌊clamp((x−β)/s, n, p)⌉ + β
(eq. 3-4) with the gradients of eq. 5-6 and LSQ's gradient scale on s and β. One quantizer class
serves LSQ and LSQ+: :class:`qbench.quant.lsq.LearnedStepQuantizer`.

``config`` presets the activation grid (section 4, Tables 2-4) and the explicit fields win
over it:

    1: unsigned + symmetric (= LSQ)    2: signed + symmetric
    3: signed + asymmetric             4: unsigned + asymmetric

``init`` (Table 5) sets both quantizers' initialisation: ``minmax``; ``lsq`` (s = 2⟨|v|⟩/√p);
``lsqplus`` — weights s = max(|μ−3σ|, |μ+3σ|)/2^(b−1), activations (s, β) minimising ‖x̂ − x‖²
over samples of the calibration batches. ``offset`` (Table 6): ``learned``, ``xmin``
(β fixed to the running minimum) or ``zero``; left null it is learned for the asymmetric
configurations and zero for the symmetric ones.

Choices the paper leaves open (fields of ``conf/method/lsqplus.yaml``): μ, σ of |w| (as our
source words it) or of w (``weight_sigma_of_abs``), and the calibration batches (``calib_batches``).

The activation MSE fit departs from the paper, which minimises ‖x̂ − x‖² by gradient steps through
the STE gradients (section 3.3): such a fit, Adam from the min-max start, stops short of the
minimum, by most for config 3, whose β must travel 2^(b−1)·Δs as s shrinks.
:func:`qbench.quant.lsq.mse_step_offset` instead searches ``mse_grid``² grids exactly on the
samples, with the grid's lowest level m = β + n·s as the variable, then takes at most
``mse_steps`` least-squares (Lloyd) steps. It reaches the brute-force optimum over (s, β) within
1 % (tests/test_lsqplus_init.py), and configs 3 and 4 get the same grid, β differing by s·2^(b−1).

The configurations choose the grid of activation outputs. Inputs that are signed data rather
than activation outputs (the normalised image, linear-bottleneck outputs and residual sums; see
:mod:`qbench.quant.graph`) are quantized signed and symmetric in every configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from qbench.methods.registry import Method, RunFacts, register_method
from qbench.quant.calibrate import initialize_quantizers
from qbench.quant.convert import LayerPrecision
from qbench.quant.lsq import LearnedStepQuantizer, Offset, floored_steps
from qbench.validate import Count, PositiveInt, require

CONFIGS = {1: (False, False), 2: (True, False), 3: (True, True), 4: (False, True)}
INITS = {"minmax": ("minmax", "minmax"), "lsq": ("lsq", "lsq"), "lsqplus": ("sigma3", "mse")}


@register_method("lsqplus", trains=True)
class LSQPlus(Method):

    @dataclass
    class Config:
        config: Literal[1, 2, 3, 4] = 4
        act_signed: bool | None = None
        act_asymmetric: bool | None = None
        init: Literal["minmax", "lsq", "lsqplus"] = "lsqplus"
        offset: Offset | None = None
        grad_scale: bool = True
        per_example_numel: bool = False
        weight_sigma_of_abs: bool = True
        mse_steps: Count = 200
        mse_grid: PositiveInt = 32
        calib_batches: PositiveInt | None = None
        calib_max_samples: PositiveInt = 1 << 18

        def __post_init__(self) -> None:
            preset_signed, preset_asym = CONFIGS[self.config]
            self.act_signed = preset_signed if self.act_signed is None else self.act_signed
            self.act_asymmetric = preset_asym if self.act_asymmetric is None else self.act_asymmetric
            if self.offset is None:
                self.offset = "learned" if self.act_asymmetric else "zero"
            require(self.offset == "zero" or self.act_asymmetric,
                    f"method.offset={self.offset} needs an asymmetric activation grid "
                    "(config 3 or 4, or act_asymmetric=true)")

    def weight_quantizer(self, layer: LayerPrecision) -> LearnedStepQuantizer:
        c = self.config
        return LearnedStepQuantizer(layer.weight_bits, signed=True, init=INITS[c.init][0], grad_scale=c.grad_scale,
                                    sigma_of_abs=c.weight_sigma_of_abs)

    def input_quantizer(self, layer: LayerPrecision) -> LearnedStepQuantizer:
        """Signed data (the image, a linear bottleneck, a residual sum) gets a signed,
        symmetric grid; activation outputs the configuration's grid and offset."""
        c = self.config
        signed_data = bool(layer.input_signed)
        return LearnedStepQuantizer(layer.input_bits, signed=signed_data or c.act_signed,
                                    offset="zero" if signed_data else c.offset, init=INITS[c.init][1],
                                    grad_scale=c.grad_scale, per_example_numel=c.per_example_numel, batch_split=True,
                                    mse_steps=c.mse_steps, mse_grid=c.mse_grid)

    def initialize(self, model: nn.Module, batches: list[torch.Tensor], train_mode: bool) -> None:
        """From the first ``calib_batches`` calibration batches (all when null)."""
        c = self.config
        initialize_quantizers(model, batches[:c.calib_batches], c.calib_max_samples, train_mode)

    def report(self, model: nn.Module, facts: RunFacts) -> dict:
        """``steps_at_floor``: the quantizers training drove to the step floor (:func:`floored_steps`)."""
        return {"steps_at_floor": floored_steps(model)}
