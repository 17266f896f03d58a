"""Secure aggregation checked against Flower's own FedAvg, round by round, on a real engine.

Runs (the experiment kinds, ``flwr run``, the deployment launcher) all go through the one
round loop, :func:`federated.server_app.run_rounds`, with plain or secure aggregation; its
Flower app is :data:`app` below. This module is the verification harness beside it: every
round it sends the same global model out twice, once for Flower's built-in FedAvg and once for
:class:`~federated.secure_aggregation.SecureAggregation`, records the largest difference
against the stated quantization bound, and continues from the secure result. Clients train
deterministically (seeded by round and partition), so both aggregates average identical
client updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from federated.arrays import from_numpy as _to_arrays
from federated.arrays import to_numpy as _to_numpy
from federated.secure_fedavg import SecAggParams, SecureFedAvg, exchange, split_run_config
from federated.server_app import make_server_app as _one_loop_app

Evaluate = Callable[[dict[str, np.ndarray]], tuple[float, float]]
RoundCallback = Callable[[dict[str, Any]], None]


def compare_secure_to_plain(grid: Grid, initial: dict[str, np.ndarray], num_rounds: int, params: SecAggParams,
                            evaluate: Evaluate | None = None, timeout: float = 600.0,
                            on_round: RoundCallback | None = None, num_nodes: int = 2) -> dict[str, Any]:
    """Runs ``num_rounds`` rounds on ``grid``, each aggregated by FedAvg and securely from the same model.

    Args:
        grid: Flower's Grid.
        initial: The initial global model.
        num_rounds: Rounds to run.
        params: Secure-aggregation parameters.
        evaluate: Optional ``weights -> (test_loss, test_acc)``.
        timeout: Seconds to wait for each message round.
        on_round: Called with each round's record.
        num_nodes: Nodes every round samples (all of the federation's). Flower's FedAvg sizes
            its sample from the nodes connected when it is called, which at the start of a
            simulation may be fewer (the engine still registers them): a plain reference that
            sampled 2 of 3 nodes in round 1 was the cause of issue 12's "intermittent
            mismatch" (point 7). With ``num_nodes`` both wait for all of them.

    Returns:
        ``{"weights": final secure weights, "history": [one record per round]}``; a record has
        ``round``, ``train_loss``, ``test_loss``, ``test_acc``, ``survivors``, ``dropped``,
        ``plain_replies``, ``pipelined``, ``max_abs_diff`` and ``error_bound``; wall-clock
        numbers sit under ``timing``.
    """
    nodes = {"min_available_nodes": num_nodes, "min_train_nodes": num_nodes}
    secure = SecureFedAvg(params, timeout=timeout, num_rounds=num_rounds, **nodes)
    plain = FedAvg(**nodes)
    weights, history = initial, []
    for server_round in range(1, num_rounds + 1):
        record: dict[str, Any] = {"round": server_round, "timing": {}}
        arrays = _to_arrays(weights)
        t0 = time.perf_counter()
        replies = exchange(grid, list(plain.configure_train(server_round, arrays, ConfigRecord(), grid)), timeout)
        # Float sums depend on order: sort the replies by content so a run repeats exactly.
        replies.sort(key=lambda m: (m.has_error(), _reply_key(m)))
        out, _ = plain.aggregate_train(server_round, replies)
        record["timing"]["plain_round_seconds"] = time.perf_counter() - t0
        if out is None:
            raise RuntimeError(f"round {server_round}: no client returned an update within {timeout:g} s")
        plain_weights = _to_numpy(out)
        # The reference must average the same clients: a lost plain reply (not a secure
        # one) would otherwise show up as a mismatch of the secure aggregate.
        record["plain_replies"] = sum(1 for m in replies if not m.has_error())
        t0 = time.perf_counter()
        replies = exchange(grid, list(secure.configure_train(server_round, arrays, ConfigRecord(), grid)), timeout)
        out, metrics = secure.aggregate_train(server_round, replies)
        record["timing"]["secure_round_seconds"] = time.perf_counter() - t0
        record["timing"].update({f"secure_{k}_seconds": v for k, v in secure.last_round.seconds.items()})
        assert out is not None and metrics is not None
        weights = _to_numpy(out)
        record.update(train_loss=float(metrics["train_loss"]), survivors=secure.last_round.survivors,
                      dropped=secure.last_round.dropped, error_bound=secure.last_round.error_bound,
                      pipelined=secure.last_round.pipelined,
                      server_bytes=secure.last_round.server_bytes_in + secure.last_round.server_bytes_out,
                      max_abs_diff=max(float(np.max(np.abs(weights[k].astype(np.float64) - plain_weights[k])))
                                       for k in weights))
        if evaluate is not None:
            record["test_loss"], record["test_acc"] = evaluate(weights)
        history.append(record)
        if on_round:
            on_round(record)
    return {"weights": weights, "history": history}


def _reply_key(msg: Any) -> tuple[float, float]:
    if msg.has_error():
        return (0.0, 0.0)
    metrics = msg.content["metrics"]
    return (float(metrics["num-examples"]), float(metrics["train_loss"]))


def make_comparison_server_app(overrides: dict[str, Any] | None = None,
                               sink: list[dict[str, Any]] | None = None, on_round: RoundCallback | None = None,
                           initial: dict[str, np.ndarray] | None = None, evaluate: bool = True) -> ServerApp:
    """A ServerApp running :func:`compare_secure_to_plain` on federated.task's model.

    Args:
        overrides: Run-config keys (FedSettings keys and ``secagg-*`` keys) that win over the context's.
        sink: If given, the result is appended to it.
        on_round: Called with each round's record.
        initial: A model to start from instead of federated.task's (the benchmark's synthetic one).
        evaluate: Evaluate each round's model on the held-out test split.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from federated.server_app import evaluate_global
        from federated.settings import FedSettings
        from federated.task import get_weights, load_model

        rest, params = split_run_config({**dict(context.run_config), **(overrides or {})})
        settings = FedSettings.from_run_config(rest)
        start = initial if initial is not None else _to_numpy(
            get_weights(load_model(settings.dataset, settings.hidden, settings.seed)))
        history: list[dict[str, Any]] = []

        def record(rec: dict[str, Any]) -> None:
            # Under the deployment engine the checkpoint is how the launcher reads the rounds.
            history.append(rec)
            if settings.checkpoint_dir:
                from federated.checkpoint import save_server_checkpoint

                save_server_checkpoint(settings.checkpoint_dir, rec["round"], {}, history)
            if on_round:
                on_round(rec)

        result = compare_secure_to_plain(grid, start, settings.num_server_rounds, params,
                                         evaluate=(lambda w: evaluate_global(settings, w)) if evaluate else None,
                                         timeout=settings.round_timeout, on_round=record,
                                         num_nodes=settings.num_partitions)
        if sink is not None:
            sink.append(result)

    return server_app


def simulate_comparison(overrides: dict[str, Any], num_supernodes: int, *, num_cpus: int = 2,
                    on_round: RoundCallback | None = None, local_train: Any = None,
                    initial: dict[str, np.ndarray] | None = None, evaluate: bool = True,
                    verbose: bool = False) -> dict[str, Any]:
    """Runs the comparison ServerApp and the project's secure ClientApp on Flower's simulation engine.

    Args:
        overrides: The run config (FedSettings keys and ``secagg-*`` keys).
        num_supernodes: Virtual SuperNodes (clients).
        num_cpus: CPUs Ray may use (one per ClientApp actor).
        on_round: Called with each round's record.
        local_train: Replaces the default local training (see make_secure_client_app).
        initial: Replaces the initial model.
        evaluate: Evaluate on the held-out test split after each round.
        verbose: Keep Flower's INFO log.

    Returns:
        :func:`compare_secure_to_plain`'s result.
    """
    from federated.secure_client_app import make_secure_client_app
    from federated.simulation import run_apps

    sink: list[dict[str, Any]] = []
    return run_apps(make_comparison_server_app(overrides, sink, on_round, initial, evaluate),
                    make_secure_client_app(overrides, local_train), num_supernodes, sink,
                    num_cpus=num_cpus, verbose=verbose)


# What a Flower project names as its ServerApp: the one round loop of federated.server_app with
# secure aggregation (it checkpoints every round and resumes like a plain run).
app = _one_loop_app({"aggregation": "secure"})
