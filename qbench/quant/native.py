"""LSQ / LSQ+ and APoT quantizers as one C++ op per call on the CPU (``runtime.native_kernels``).

On the CPU a quantizer call costs more in Python, dispatcher and ``torch.compile`` guard overhead
than in arithmetic wherever the tensor is small: ~210 µs forward + backward for a 144×1×3×3
depthwise weight (~47 µs through this op) against ~30 µs for one autograd multiply, and
MobileNetV2 makes ~100 such calls a step. Each op computes a quantizer's forward and gradients in
one C++ autograd Function, vectorised by the C++ compiler (sources in ``csrc/``):

- ``learned_step.cpp``: :class:`qbench.quant.lsq.LearnedStepFakeQuant` (LSQ, LSQ+), the step floor
  with its straight-through gradient inside; and its forward alone, in place after a ReLU or ReLU6
  (evaluation of a fused batch norm, :mod:`qbench.quant.fused`);
- ``rcf.cpp``: :class:`qbench.quant.apot.RCFQuantize` (APoT, PoT and uniform levels with the
  reparameterised clipping function), weight normalisation and its gradient inside, the nearest
  level by a chain of selects (up to 64 levels) or a binary search.

Same math: the forwards are the eager formulas bit for bit; ∂L/∂v too (APoT with weight
normalisation: up to rounding, since its mean and standard deviation are summed in double). The
parameters' sums run in one fixed order (16 float lanes per block of 16384 elements, then lanes
and blocks in double, ``csrc/native.h``), so they do not depend on the thread count, and differ
from the compiled kernels' float sums by rounding. The published records were made with the
compiled kernels, so the flag is off by default. The ops are built on first use with the
machine's C++ compiler (the one ``torch.compile`` uses; ~40 s, cached under
``TORCH_EXTENSIONS_DIR``); tensors on other devices or of other dtypes take the Python path.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / name for name in ("ops.cpp", "learned_step.cpp", "rcf.cpp")]
HEADER = CSRC / "native.h"
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]  # no contracted multiply-adds: the
# forward must round exactly as the eager formula

_module: ModuleType | None = None
_enabled = False


class NativeBuildError(RuntimeError):
    """The C++ ops could not be built (no compiler, or it failed)."""


def load() -> ModuleType:
    """The built ops' module, building it on first use (again when a source or the header changed:
    torch tracks the sources, and the header's hash goes in as a define)."""
    global _module
    if _module is None:
        from torch.utils.cpp_extension import load as load_extension
        # torch runs `ninja` from PATH: the ninja package installs it beside this interpreter,
        # which is not on PATH when the environment's python runs without being activated
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        header = hashlib.sha256(HEADER.read_bytes()).hexdigest()[:16]
        try:
            _module = load_extension("qbench_native", [str(p) for p in SOURCES],
                                     extra_cflags=[*CFLAGS, f"-DQBENCH_NATIVE_H={header}"])
        except Exception as err:  # a missing compiler raises RuntimeError, OSError or CalledProcessError
            line = next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)
            raise NativeBuildError(f"cannot build the native quantizer ops (qbench/quant/csrc): {line}") from err
    return _module


def use_native_kernels(enabled: bool) -> None:
    """Route LSQ / LSQ+ and APoT quantizers on CPU float32 tensors through the C++ ops (building them now,
    so that a missing compiler is reported before any work), or back to the Python path."""
    global _enabled
    if enabled:
        load()
    _enabled = enabled


def applies(v: torch.Tensor) -> bool:
    """Whether the C++ ops take ``v``: enabled, a float32 CPU tensor (a strided view is made dense
    in its memory format, as the Python path's :func:`~qbench.quant.kernels.flatten` does),
    outside ``torch.compile``."""
    return _enabled and v.device.type == "cpu" and v.dtype == torch.float32 and not torch.compiler.is_compiling()


def learned_step_fake_quant(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, qmin: int,
                            qmax: int, grad_scale: float) -> torch.Tensor:
    """v̂ = max(s, 1e-8)·⌊clamp((v − β)/s, n, p)⌉ + β with the LSQ / LSQ+ gradients, ∂L/∂s and ∂L/∂β
    times ``grad_scale`` (the floor passes the gradient straight to s)."""
    return load().learned_step_fake_quant(v, step, offset, qmin, qmax, grad_scale)


def learned_step_fake_quant_backward(v: torch.Tensor, grad_out: torch.Tensor, step: torch.Tensor,
                                     offset: torch.Tensor | None, qmin: int, qmax: int,
                                     grad_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(∂L/∂v, ∂L/∂s, ∂L/∂β) of :func:`learned_step_fake_quant` at ``v`` for ∂L/∂v̂ = ``grad_out``:
    what its backward returns, for a caller that keeps v instead of v̂
    (:class:`qbench.quant.layers.RecomputedWeightConv`)."""
    return load().learned_step_fake_quant_backward(v, grad_out, step, offset, qmin, qmax, grad_scale)


IN_PLACE_ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2}  # learned_step_fake_quant_'s act codes


def learned_step_fake_quant_(v: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, qmin: int,
                             qmax: int, activation: str = "identity") -> torch.Tensor:
    """v ← max(s, 1e-8)·⌊clamp((act(v) − β)/s, n, p)⌉ + β, written over ``v`` (dense, no gradient):
    the forward of :func:`learned_step_fake_quant` after ``activation`` (a key of
    :data:`IN_PLACE_ACTIVATIONS`: ReLU and ReLU6 as PyTorch computes them), bit for bit, in one pass
    and without a new tensor. Returns ``v``."""
    return load().learned_step_fake_quant_(v, step, offset, qmin, qmax, IN_PLACE_ACTIVATIONS[activation])


def rcf_quantize(v: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor, bounds: torch.Tensor, lo: float,
                 grad_outside: float, weight_norm: bool) -> torch.Tensor:
    """x̂ = α·Π(clip(n/α, lo, 1)) with APoT's RCF gradients (:class:`qbench.quant.apot.RCFQuantize`):
    ``levels`` sorted, ``bounds`` their midpoints (a trailing +inf is ignored); n = (v − mean)/std
    with ``weight_norm``, else v."""
    return load().rcf_quantize(v, alpha, levels, bounds, lo, grad_outside, weight_norm)
