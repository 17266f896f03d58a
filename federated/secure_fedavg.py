"""SecureFedAvg: Flower's Message-API FedAvg aggregated securely, ``SecureAggregation(FedAvg(...))``.

Kept as the short name the experiments and benchmarks use; the mechanism lives in
:mod:`federated.secure_aggregation` (server) and :mod:`federated.secure_mod` (client).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg

from federated.secure_aggregation import (
    SecAggParams,
    SecureAggregation,
    SecureRound,
    exchange,
    flatten,
    split_run_config,
    unflatten,
)
from federated.secure_mod import client_vector

__all__ = ["SecAggParams", "SecureFedAvg", "SecureRound", "client_vector", "exchange", "flatten",
           "split_run_config", "unflatten"]


class SecureFedAvg(SecureAggregation):
    """``SecureAggregation(FedAvg(**kwargs), params, timeout=..., num_rounds=...)``.

    Args:
        params: Secure-aggregation parameters.
        timeout: Seconds to wait for each extra exchange.
        num_rounds: Rounds the run will have (set by ``start``).
        metrics: Reply metrics aggregated besides the arrays.
        **kwargs: Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    def __init__(self, params: SecAggParams | None = None, *, timeout: float = 600.0,
                 num_rounds: int | None = None, metrics: tuple[str, ...] = ("train_loss",), **kwargs: Any) -> None:
        super().__init__(FedAvg(**kwargs), params, metrics=metrics, timeout=timeout, num_rounds=num_rounds)
