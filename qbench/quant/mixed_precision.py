"""Per-layer weight bit-widths from the lossy coding length of each layer's weights, as Attention
Round (Diao et al., arXiv 2207.03088) assigns mixed precision without a combinatorial search.

The paper names the measure; its formula and the mapping to bits could not be read (papers.md
§5.2), so both are qbench's choice (papers.md §5.3). Coding length (Ma, Derksen, Hong, Wright,
TPAMI 2007) of a layer's weights seen as m vectors (one per output channel) of dimension n
(the fan-in), W ∈ ℝ^{n×m}, at distortion ε:

    L(W) = ((m + n)/2)·log₂ det(I + (n/(ε²m))·W Wᵀ)                                   (1)

with ε² = n·(d·rms(W))², a per-coordinate distortion of d times the weights' RMS, so L does not
depend on the layer's scale. ℓ = L/(n·m) is the coding length in bits per weight. Bits follow
the standardised ℓ: with ℓ̄ the parameter-weighted mean of ℓ, s_ℓ its standard deviation over
layers and g the bits per standard deviation (``gain``),

    b_l = clamp(⌊B + τ + g·(ℓ_l − ℓ̄)/s_ℓ⌉, b_min, b_max)                               (2)

and τ the largest shift for which Σ N_l·b_l ≤ B·Σ N_l (N_l the layer's weight count, B the
average-bit budget): b is non-decreasing in ℓ, and the parameter-weighted average never exceeds B.
Standardising matters: on trained ResNet18 ℓ spans only ~0.8 bit across layers, which rounds
to a uniform allocation if used as bits directly.
"""
from __future__ import annotations

import math

import torch


def coding_length(weight: torch.Tensor, distortion: float) -> float:
    """L(W) of eq. (1) in bits, W = the weight reshaped to (out channels, fan-in), transposed.
    The determinant is taken on the smaller Gram matrix (det(I + cWWᵀ) = det(I + cWᵀW))."""
    w = weight.detach().double().reshape(weight.shape[0], -1).T
    n, m = w.shape
    rms = w.square().mean().sqrt().item()
    if rms == 0.0:
        return 0.0
    scale = 1.0 / ((distortion * rms) ** 2 * m)  # n/(ε²m) with ε² = n·(d·rms)²
    gram = w @ w.T if n <= m else w.T @ w
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    logdet = torch.linalg.slogdet(eye + scale * gram).logabsdet.item()
    return (m + n) / 2 * logdet / math.log(2)


def bits_per_weight(weight: torch.Tensor, distortion: float) -> float:
    """ℓ = L(W)/(number of weights)."""
    return coding_length(weight, distortion) / weight.numel()


def allocate_bits(lengths: dict[str, float], sizes: dict[str, int], budget: float,
                  min_bits: int, max_bits: int, gain: float = 1.0) -> dict[str, int]:
    """Eq. (2): bits per layer from its coding length per weight ``lengths`` (ℓ) and weight count
    ``sizes`` (N) under the parameter-weighted average ``budget`` (B), ``gain`` bits per
    standard deviation of ℓ."""
    if not min_bits <= budget:
        raise ValueError(f"budget {budget} is below the minimum bit-width {min_bits}")
    names = sorted(lengths)
    ell = torch.tensor([lengths[k] for k in names], dtype=torch.float64)
    n = torch.tensor([sizes[k] for k in names], dtype=torch.float64)
    centred = ell - (ell * n).sum() / n.sum()
    spread = ell.std().item() if len(names) > 1 else 0.0
    centred = gain * centred / spread if spread > 0 else torch.zeros_like(centred)

    def bits_at(tau: torch.Tensor) -> torch.Tensor:
        raw = torch.floor(budget + tau.unsqueeze(-1) + centred + 0.5)
        return raw.clamp(min_bits, max_bits)

    levels = torch.arange(min_bits, max_bits + 1, dtype=torch.float64)
    shifts = (levels.unsqueeze(-1) - 0.5 - budget - centred).flatten()
    totals = (bits_at(shifts) * n).sum(-1)
    feasible = shifts[totals <= budget * n.sum() + 1e-9]
    chosen = bits_at(feasible.max()) if feasible.numel() else torch.full_like(ell, float(min_bits))
    return {k: int(b) for k, b in zip(names, chosen.tolist())}
