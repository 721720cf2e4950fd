"""LSQ+ MSE activation initialisation (section 3.3) against a brute-force optimum over (s, β)."""
import pytest
import torch
import torch.nn.functional as F

from qbench.quant import LearnedStepFakeQuant, LearnedStepQuantizer, Observation, integer_range
from qbench.quant.lsq import SortedSamples

CONFIGS = {1: (False, "zero"), 2: (True, "zero"), 3: (True, "learned"), 4: (False, "learned")}


def activations(kind: str, n: int = 1 << 14, seed: int = 0) -> torch.Tensor:
    """ReLU-like: relu of a Gaussian plus a little noise; Swish-like: x·sigmoid(x), x ~ N(0, 2²)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g)
    if kind == "relu":
        return F.relu(z) + 0.01 * torch.randn(n, generator=g)
    return F.silu(2 * z)


def quantization_mse(x: torch.Tensor, step: float, offset: float | None, qmin: int, qmax: int) -> float:
    """Mean (x̂ − x)² with the quantizer's own forward, in float64."""
    x = x.double()
    s = torch.tensor(step, dtype=torch.float64)
    b = torch.tensor(offset, dtype=torch.float64) if offset is not None else None
    return (LearnedStepFakeQuant.apply(x, s, b, qmin, qmax, 1.0) - x).square().mean().item()


def initialised_mse(x: torch.Tensor, bits: int, signed: bool, offset: str) -> float:
    q = LearnedStepQuantizer(bits, signed=signed, offset=offset, init="mse")
    q.initialize(Observation.of(x))
    beta = q.offset.item() if q.offset is not None else None
    return quantization_mse(x, q.step.item(), beta, *q.qrange)


def zoom(data: SortedSamples, levels: int, low: torch.Tensor, step: torch.Tensor,
         dlow: float, dstep: float, rounds: int = 5) -> tuple[float, float, float]:
    """Refine a grid point (m, s) on 21×21 grids of ±one cell, shrinking the cell 5× a round."""
    for _ in range(rounds):
        lows = low + dlow * torch.linspace(-1, 1, 21, dtype=torch.float64)
        steps = (step + dstep * torch.linspace(-1, 1, 21, dtype=torch.float64)).clamp_min(1e-12)
        lows, steps = (t.flatten() for t in torch.meshgrid(lows, steps, indexing="ij"))
        errors = data.mse(lows, steps, levels)
        best = errors.argmin()
        low, step, dlow, dstep = lows[best], steps[best], dlow / 5, dstep / 5
    return errors[best].item(), step.item(), low.item()


def brute_force(x: torch.Tensor, qmin: int, qmax: int, offset: float | None) -> tuple[float, float, float | None]:
    """(MSE, s, β) of the best grid: β learned — 400 × 400 grids of the lowest level
    m = β + n·s ∈ [min − 5 % range, max] and s ∈ (0, 1.1·range/(p − n)], each of the 8 best
    refined by :func:`zoom`; β fixed — 20 000 steps up to 1.05 × the min-max step, the best
    refined five times on 201 steps of ±one cell, the cell shrinking 50× a round."""
    data = SortedSamples(x)
    levels = qmax - qmin + 1
    lo, hi = data.values[0].item(), data.values[-1].item()
    if offset is not None:
        step_max = max([(hi - offset) / qmax] + ([(lo - offset) / qmin] if qmin < 0 else []))
        steps = torch.linspace(step_max / 20000, 1.05 * step_max, 20000, dtype=torch.float64)
        best = data.mse(offset + qmin * steps, steps, levels).argmin()
        ds = (steps[1] - steps[0]).item()
        for _ in range(5):
            steps = steps[best] + ds * torch.linspace(-1, 1, 201, dtype=torch.float64)
            errors = data.mse(offset + qmin * steps, steps, levels)
            best, ds = errors.argmin(), ds / 50
        return errors[best].item(), steps[best].item(), offset
    span = hi - lo
    low_axis = torch.linspace(lo - 0.05 * span, hi, 400, dtype=torch.float64)
    step_axis = torch.linspace(1.1 * span / (levels - 1) / 400, 1.1 * span / (levels - 1), 400, dtype=torch.float64)
    lows, steps = (t.flatten() for t in torch.meshgrid(low_axis, step_axis, indexing="ij"))
    errors = data.mse(lows, steps, levels)
    cell = ((low_axis[1] - low_axis[0]).item(), (step_axis[1] - step_axis[0]).item())
    err, step, low = min(zoom(data, levels, lows[i], steps[i], *cell) for i in errors.argsort()[:8])
    return err, step, low - qmin * step


def test_sorted_samples_mse_is_the_quantizer_error():
    x = activations("swish", n=4096)
    data = SortedSamples(x)
    g = torch.Generator().manual_seed(3)
    lows = -1 + 2 * torch.rand(16, generator=g, dtype=torch.float64)
    steps = 0.05 + torch.rand(16, generator=g, dtype=torch.float64)
    errors = data.mse(lows, steps, 8)
    for low, step, err in zip(lows.tolist(), steps.tolist(), errors.tolist()):
        assert err == pytest.approx(quantization_mse(x, step, low, 0, 7), rel=1e-9)


@pytest.mark.parametrize("kind", ["relu", "swish"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("config", [1, 2, 3, 4])
def test_mse_init_reaches_the_brute_force_optimum(config, bits, kind):
    signed, offset = CONFIGS[config]
    x = activations(kind)
    qmin, qmax = integer_range(bits, signed)
    optimum, step, beta = brute_force(x, qmin, qmax, None if offset == "learned" else 0.0)
    reached = initialised_mse(x, bits, signed, offset)
    assert quantization_mse(x, step, beta, qmin, qmax) == pytest.approx(optimum, rel=1e-9)
    assert optimum <= reached * 1.001, "the brute force is not an optimum"
    assert reached <= optimum * 1.01, (reached, optimum)


@pytest.mark.parametrize("kind", ["relu", "swish"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_signed_and_unsigned_asymmetric_grids_reach_the_same_mse(bits, kind):
    """Configs 3 and 4 are one function family: β shifted by s·2^(b−1) maps one onto the other."""
    x = activations(kind, seed=1)
    signed_mse, unsigned_mse = (initialised_mse(x, bits, signed, "learned") for signed in (True, False))
    assert signed_mse == pytest.approx(unsigned_mse, rel=0.01)


@pytest.mark.parametrize("bits", [2, 4])
def test_mse_init_with_xmin_offset_fits_the_step_for_that_offset(bits):
    x = activations("swish")
    q = LearnedStepQuantizer(bits, signed=True, offset="xmin", init="mse")
    q.initialize(Observation.of(x))
    qmin, qmax = q.qrange
    assert q.offset.item() == x.min().item()
    optimum, _, _ = brute_force(x, qmin, qmax, x.min().item())
    assert quantization_mse(x, q.step.item(), q.offset.item(), qmin, qmax) <= optimum * 1.01
