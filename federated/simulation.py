"""Runs the ServerApp and ClientApp on Flower's simulation engine (Ray), kept small.

::

    result = simulate(FedSettings(num_partitions=10, num_server_rounds=30))
    result["history"][-1]["test_acc"]

Ray is started with ``num_cpus`` CPUs (one per client actor) and shut down by Flower's Ray
backend when the run ends, also when it fails.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from federated.server_app import RoundCallback, make_server_app
from federated.settings import FedSettings


def simulate(settings: FedSettings, *, num_cpus: int = 2, on_round: RoundCallback | None = None,
             verbose: bool = False) -> dict[str, Any]:
    """Runs ``settings`` on the simulation engine and returns ``run_rounds``' result.

    Args:
        settings: The run (``num_partitions`` virtual SuperNodes are started).
        num_cpus: CPUs Ray may use; each ClientApp actor takes one.
        on_round: Called in this process with each completed round's record.
        verbose: Keep Flower's INFO log on the console.

    Raises:
        TooFewReplies: when a round falls below ``settings.min_replies``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from federated.client_app import make_client_app

    overrides = settings.to_run_config()
    sink: list[Any] = []
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False,
                      "logging_level": "ERROR", "log_to_driver": verbose},
    }
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        _run(run_simulation, dict(
            server_app=make_server_app(overrides, sink=sink, on_round=on_round),
            client_app=make_client_app(overrides),
            num_supernodes=settings.num_partitions,
            backend_config=backend_config,
        ), sink)
    finally:
        flwr_logger.setLevel(level)
        _shutdown_ray()
    if not sink:
        raise RuntimeError("the simulation ended without a result from the ServerApp (see Flower's log)")
    return sink[0]


def _run(run_simulation: Any, kwargs: dict[str, Any], sink: list[Any]) -> None:
    try:
        run_simulation(**kwargs)
    except Exception as exc:
        cause = next((x for x in sink if isinstance(x, BaseException)), None)
        if cause is not None and cause is not exc:
            raise cause from None
        raise
    cause = next((x for x in sink if isinstance(x, BaseException)), None)
    if cause is not None:
        raise cause


def _shutdown_ray() -> None:
    # Flower's backend shuts Ray down on a normal end; after a ServerApp error it may not.
    import ray

    if ray.is_initialized():
        ray.shutdown()
