"""The toy task every worker trains: linear least squares on its own seeded slice of data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LeastSquares:
    """The task every worker trains: linear least squares on its own seeded slice of data.

    Args:
        dim: Number of parameters.
        examples_per_worker: Rows of each worker's data.
        seed: Seed of the data generator.
    """

    dim: int = 16
    examples_per_worker: int = 64
    seed: int = 0
    noise: float = 0.1
    _cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def data(self, worker: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Worker ``worker``'s inputs and targets (all workers share one true model)."""
        g = torch.Generator().manual_seed(self.seed)
        w_true = torch.randn(self.dim, generator=g, dtype=torch.float64)
        x = torch.randn(num_workers * self.examples_per_worker, self.dim, generator=g, dtype=torch.float64)
        y = x @ w_true + self.noise * torch.randn(x.shape[0], generator=g, dtype=torch.float64)
        lo = worker * self.examples_per_worker
        return x[lo:lo + self.examples_per_worker], y[lo:lo + self.examples_per_worker]

    @staticmethod
    def grad(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of 0.5 * mean((x @ params - y)^2)."""
        return x.T @ (x @ params - y) / x.shape[0]

    @staticmethod
    def loss(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(0.5 * ((x @ params - y) ** 2).mean())

    def init(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)
