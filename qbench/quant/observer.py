"""Statistics of a tensor seen during calibration, from which quantizers initialise themselves."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Observation:
    """Running statistics of every value seen, plus a bounded random subsample of them.

    Exact: count, sum, sum of squares, sum of |v|, min, max. The subsample (at most
    ``max_samples`` values, drawn uniformly from each observed tensor) serves initialisations
    that minimise an element-wise error, which a uniform subsample estimates without bias.
    """

    max_samples: int = 1 << 20
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    total_abs: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    samples: list[torch.Tensor] = field(default_factory=list)

    def update(self, values: torch.Tensor) -> None:
        v = values.detach().float().flatten()
        self.count += v.numel()
        self.total += v.sum().item()
        self.total_sq += v.square().sum().item()
        self.total_abs += v.abs().sum().item()
        self.min = min(self.min, v.min().item())
        self.max = max(self.max, v.max().item())
        if v.numel() > self.max_samples:
            v = v[torch.randint(v.numel(), (self.max_samples,), device=v.device)]
        self.samples.append(v.cpu())

    @classmethod
    def of(cls, values: torch.Tensor) -> "Observation":
        obs = cls(max_samples=values.numel())
        obs.update(values)
        return obs

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def mean_abs(self) -> float:
        return self.total_abs / self.count

    @property
    def std(self) -> float:
        var = max(self.total_sq / self.count - self.mean**2, 0.0)
        return var**0.5

    def sample_tensor(self) -> torch.Tensor:
        values = torch.cat(self.samples)
        if values.numel() > self.max_samples:
            values = values[torch.randperm(values.numel())[:self.max_samples]]
        return values
