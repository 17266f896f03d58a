"""A user's own ClientApp with ``mods=[secure_agg_mod]`` on Flower's simulation engine.

The ServerApp runs ``SecureAggregation(FedAvg())`` and then ``SecureAggregation(FedAdam())``
by Flower's own round loop (``Strategy.start``), three rounds each, one client failing in
round 2. Each round's model is checked against the wrapped strategy applied, in this process,
to the survivors' plain replies (the same deterministic local updates, in the clear).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

N, ROUNDS, FAILING = 4, 3, (2, 1)  # four nodes; partition 1 raises in round 2


def _user_parts() -> tuple[Any, Any]:
    """(local update, ClientApp) as a user writes them. Defined in a function so that Ray
    ships them to its workers by value."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from federated import secure_agg_mod

    def update(arrays: dict[str, np.ndarray], pid: int, server_round: int) -> tuple[dict[str, np.ndarray], int, float]:
        rng = np.random.default_rng(100 * server_round + pid)
        new = {k: (0.5 * v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32) for k, v in arrays.items()}
        return new, 20 * (pid + 1) + server_round, float(pid) + 0.5

    app = ClientApp(mods=[secure_agg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        if (server_round, pid) == FAILING:
            raise RuntimeError("this device lost its connection")
        arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        new, n, loss = update(arrays, pid, server_round)
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"train_loss": loss, "num-examples": n})}), reply_to=msg)

    return update, app


def _strategies() -> dict[str, Any]:
    from flwr.serverapp.strategy import FedAdam, FedAvg

    # min_train_nodes: Flower sizes its sample from the nodes connected before it waits for the
    # minimum; the simulation engine may still be registering some in round 1.
    nodes = {"min_available_nodes": N, "min_train_nodes": N}
    return {"FedAvg": lambda: FedAvg(fraction_evaluate=0.0, **nodes),
            "FedAdam": lambda: FedAdam(fraction_evaluate=0.0, eta=0.1, tau=1e-3, **nodes)}


def test_user_app_with_secure_agg_mod_on_the_simulation_engine() -> None:
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid, ServerApp

    from federated import SecAggParams, SecureAggregation
    from federated.simulation import run_apps

    update, client_app = _user_parts()
    rng = np.random.default_rng(0)
    initial = {"w": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    server_app = ServerApp()
    sink: list[Any] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            out: dict[str, Any] = {}
            for name, make in _strategies().items():
                secure = SecureAggregation(make(), SecAggParams(seed=1), timeout=300.0)
                rounds: list[dict[str, Any]] = []

                def capture(server_round: int, arrays: ArrayRecord, secure: Any = secure,
                            rounds: list[dict[str, Any]] = rounds) -> None:
                    if server_round > 0:
                        rounds.append({"arrays": {k: v.numpy() for k, v in arrays.items()},
                                       "survivors": secure.last_round.survivors,
                                       "pipelined": secure.last_round.pipelined,
                                       "bound": secure.last_round.error_bound,
                                       "discarded": dict(secure.last_round.discarded)})

                secure.start(grid, ArrayRecord({k: Array(v) for k, v in initial.items()}), num_rounds=ROUNDS,
                             timeout=300.0, evaluate_fn=capture)
                out[name] = rounds
            sink.append(out)
        except Exception as exc:  # run_apps re-raises it here
            sink.append(exc)
            raise

    result = run_apps(server_app, client_app, N, sink, num_cpus=2)

    for name, make in _strategies().items():
        rounds = result[name]
        assert [r["survivors"] for r in rounds] == [4, 3, 4], (name, [r["discarded"] for r in rounds])
        # Round 2 used the session opened during round 1; round 3 a fresh one (partition 1
        # missed round 2's keys for it).
        assert [r["pipelined"] for r in rounds] == [False, True, False]
        reference = make()
        previous = initial
        for server_round, record in enumerate(rounds, start=1):
            pids = [p for p in range(N) if (server_round, p) != FAILING]
            replies = []
            for pid in pids:
                new, n, loss = update(previous, pid, server_round)
                replies.append(Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                                   "metrics": MetricRecord({"train_loss": loss, "num-examples": n})}),
                                       dst_node_id=0, message_type="train"))
            if hasattr(reference, "current_arrays"):
                reference.current_arrays = {k: v.copy() for k, v in previous.items()}  # what configure_train keeps
            expected, _ = reference.aggregate_train(server_round, replies)
            # FedAdam's step moves by at most eta (1 - beta1) / tau per unit change of the average.
            sensitivity = 1.0 if name == "FedAvg" else 0.1 * 0.1 / 1e-3 * server_round
            bound = record["bound"] * sensitivity + 8 * np.finfo(np.float32).eps
            for key in initial:
                diff = float(np.max(np.abs(record["arrays"][key].astype(np.float64) - expected[key].numpy())))
                assert diff <= bound, (name, server_round, key, diff, bound)
            previous = record["arrays"]
