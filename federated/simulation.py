"""Runs the ServerApp and ClientApp on Flower's simulation engine (Ray), kept small.

::

    result = simulate(FedSettings(num_partitions=10, num_server_rounds=30))
    result["history"][-1]["test_acc"]

Ray is started privately with ``num_cpus`` CPUs (one per client actor) and shut down when the
run ends, also when it fails. :func:`run_apps` is the runner the secure apps use too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from federated.server_app import RoundCallback, make_server_app
from federated.settings import FedSettings


def simulate(settings: FedSettings, *, num_cpus: int = 2,
             on_round: RoundCallback | None = None, verbose: bool = False,
             log_file: str | Path | None = None) -> dict[str, Any]:
    """Runs ``settings`` on the simulation engine and returns ``run_rounds``' result.

    Plain and secure runs (``settings.aggregation``) go through the same round loop, so both
    checkpoint every round and resume (``settings.resume``) the same way.

    Args:
        settings: The run (``num_partitions`` virtual SuperNodes are started).
        num_cpus: CPUs Ray may use; each ClientApp actor takes one.
        on_round: Called in this process with each completed round's record.
        verbose: Keep Flower's INFO log on the console.
        log_file: Where Flower's own log goes instead of the console (see :func:`run_apps`).

    Raises:
        TooFewReplies: when a round falls below ``settings.min_replies``.
    """
    from federated.client_app import make_client_app

    overrides = settings.to_run_config()  # secure aggregation's secagg-* keys included
    sink: list[Any] = []
    return run_apps(make_server_app(overrides, sink=sink, on_round=on_round), make_client_app(overrides),
                    settings.num_partitions, sink, num_cpus=num_cpus, verbose=verbose, log_file=log_file)


def run_apps(server_app: Any, client_app: Any, num_supernodes: int, sink: list[Any], *,
             num_cpus: int = 2, verbose: bool = False, log_file: str | Path | None = None) -> Any:
    """Runs a ServerApp and ClientApp on the simulation engine; returns what the ServerApp left in ``sink``.

    The one place the simulation engine is started: a private Ray (``address="local"``, even
    when another Ray runs on this host) with ``num_cpus`` CPUs, one per ClientApp actor; Flower's
    log quiet unless ``verbose``; the ServerApp's own exception re-raised instead of Flower's
    wrapper; Ray shut down whatever happened.

    Args:
        server_app: The ServerApp; it appends its result (or the exception it died of) to ``sink``.
        client_app: The ClientApp.
        num_supernodes: Virtual SuperNodes.
        sink: The list the ServerApp writes to.
        num_cpus: CPUs Ray may use.
        verbose: Keep Flower's INFO log on the console.
        log_file: Unless ``verbose``, Flower's own log (WARNING and above) is appended to this
            file instead of the console while the run lasts, Ray's teardown included. Its
            engine logs a busy ClientApp actor's death with a traceback when a signal stops
            the run; that belongs in the run's record, not on a console that was promised
            one line. Default None: the console.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's C++ crash handler would take SIGTERM from Python and abort the process (exit -6,
    # no `finally`, Ray left running); without it SIGTERM reaches Python as SystemExit.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    from flwr.simulation import run_simulation

    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"address": "local", "num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False,
                      "logging_level": "ERROR", "log_to_driver": verbose},
    }
    from federated.reaper import ProcessGuard

    # The guard stops the Ray head and its workers should this process be killed outright.
    with ProcessGuard(), _flower_log(verbose, log_file):
        try:
            _run(run_simulation, dict(server_app=server_app, client_app=client_app,
                                      num_supernodes=num_supernodes, backend_config=backend_config), sink)
        finally:
            _shutdown_ray()
    if not sink:
        raise RuntimeError("the simulation ended without a result from the ServerApp (see Flower's log)")
    return sink[0]


@contextlib.contextmanager
def _flower_log(verbose: bool, log_file: str | Path | None) -> Iterator[None]:
    """Flower's logger for the duration: INFO to the console if verbose, else WARNING and
    above to the console or, given ``log_file``, to that file only."""
    flwr_logger = logging.getLogger("flwr")
    level, handlers = flwr_logger.level, list(flwr_logger.handlers)
    redirect = None
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
        if log_file is not None:
            redirect = logging.FileHandler(log_file)
            redirect.setFormatter(logging.Formatter("%(asctime)s flwr %(levelname)s: %(message)s"))
            for h in handlers:
                flwr_logger.removeHandler(h)
            flwr_logger.addHandler(redirect)
    try:
        yield
    finally:
        flwr_logger.setLevel(level)
        if redirect is not None:
            flwr_logger.removeHandler(redirect)
            redirect.close()
            for h in handlers:
                flwr_logger.addHandler(h)


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
