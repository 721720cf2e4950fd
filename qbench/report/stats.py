"""The statistics behind the claims' verdicts, without scipy.

The Student t and Fisher F distributions are computed from the regularized incomplete beta
function I_x(a, b), evaluated with Lentz's continued fraction (Numerical Recipes, §6.4):

    t CDF:  P(T <= t) = 1 - I_{df / (df + t²)}(df / 2, 1 / 2) / 2        (t >= 0; symmetric)
    F CDF:  P(F <= x) = I_{d1·x / (d1·x + d2)}(d1 / 2, d2 / 2)

The t quantile is found by bisection on the CDF. :func:`linear_interval` is the confidence
interval of a linear combination Σ aᵢ·meanᵢ + c of independent samples' means: standard error
√(Σ aᵢ² sᵢ² / nᵢ) and Welch–Satterthwaite degrees of freedom (Σ vᵢ)² / Σ vᵢ² / (nᵢ - 1) with
vᵢ = aᵢ² sᵢ² / nᵢ — Welch's t for two means, the one-sample t interval for one.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

_TINY = 1e-300
_EPS = 3e-16
_MAX_TERMS = 500


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, _MAX_TERMS):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1.0) < _EPS:
            return fraction
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = incomplete_beta(df / 2.0, 0.5, df / (df + t * t)) / 2.0
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = ``p`` (0 < p < 1), by bisection on :func:`t_cdf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def f_cdf(x: float, d1: float, d2: float) -> float:
    """P(F <= x) for Fisher's F with ``d1`` and ``d2`` degrees of freedom; ``x`` may be infinite."""
    if x <= 0.0:
        return 0.0
    if math.isinf(x):
        return 1.0
    return incomplete_beta(d1 / 2.0, d2 / 2.0, d1 * x / (d1 * x + d2))


def seed_spread(values: list[float], kind: str) -> float:
    """The spread of at least two seeds' values: ``halfrange`` (half of max − min, the LSQ+ paper's
    "± Δ") or the sample standard deviation (any other ``kind``, the tables' ``std``)."""
    if kind == "halfrange":
        return (max(values) - min(values)) / 2
    return statistics.stdev(values)


@dataclass(frozen=True)
class Sample:
    """The seeds' values of one quantity, summarised: mean, unbiased variance, count."""

    mean: float
    variance: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Sample:
        """The summary of ``values`` (at least two)."""
        return cls(statistics.fmean(values), statistics.variance(values), len(values))


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval of an estimate; ``df`` and ``p`` (the two-sided p-value of
    estimate = 0) are None where the samples have no spread and the estimate is exact."""

    estimate: float
    low: float
    high: float
    df: float | None = None
    p: float | None = None


def welch_satterthwaite_df(parts: list[tuple[float, int]]) -> float:
    """Degrees of freedom of Σ vᵢ, each vᵢ = aᵢ² sᵢ² / nᵢ from a sample of nᵢ: ``parts`` holds
    (vᵢ, nᵢ) pairs, at least one vᵢ > 0."""
    total = sum(v for v, _ in parts)
    return total * total / sum(v * v / (n - 1) for v, n in parts if v > 0)


def linear_interval(terms: list[tuple[float, Sample]], constant: float = 0.0,
                    level: float = 0.95) -> Interval:
    """The ``level`` two-sided interval of Σ a·mean + ``constant`` over ``terms`` (a, sample) of
    independent samples: Welch–Satterthwaite t."""
    estimate = constant + sum(a * s.mean for a, s in terms)
    parts = [(a * a * s.variance / s.n, s.n) for a, s in terms]
    error = math.sqrt(sum(v for v, _ in parts))
    if error == 0.0:
        return Interval(estimate, estimate, estimate)
    df = welch_satterthwaite_df(parts)
    half_width = t_quantile(0.5 + level / 2.0, df) * error
    p = 2.0 * (1.0 - t_cdf(abs(estimate) / error, df))
    return Interval(estimate, estimate - half_width, estimate + half_width, df, p)


def variance_ratio_cdf(left: Sample, right: Sample) -> float:
    """P(F <= left.variance / right.variance) under equal variances (the F test's CDF);
    needs one variance > 0."""
    ratio = math.inf if right.variance == 0.0 else left.variance / right.variance
    return f_cdf(ratio, left.n - 1, right.n - 1)
