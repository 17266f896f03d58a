"""The ServerApp: broadcast the global model, aggregate the replies, evaluate, checkpoint.

One round loop for every run, plain or secure (:func:`run_rounds`). It is the loop of Flower's
``Strategy.start`` (configure_train, exchange, aggregate_train, configure/aggregate_evaluate,
centralized evaluation) with what a long run needs on top: it can begin at a later round
(resume), it checkpoints after every round, and it records each round (centralized test
accuracy, replies and failures, times). The aggregation is pluggable: any Message-API
strategy; :func:`make_strategy` builds the plain one (:class:`RobustFedAvg`, every update
seen by the server) or the secure one (the server sees only the sum) from the settings.

``app`` is what ``flwr run .`` and the deployment engine load (``federated.server_app:app``);
:func:`make_server_app` builds one with fixed settings for the simulation engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from federated.arrays import from_numpy, to_numpy
from federated.checkpoint import load_server_checkpoint, save_server_checkpoint
from federated.settings import FedSettings
from federated.strategy import RobustFedAvg, TooFewReplies
from federated.task import (
    UserTask,
    get_weights,
    load_model,
    load_test_data,
    set_weights,
    test,
)

RoundCallback = Callable[[dict[str, Any]], None]
# What a secure strategy reports of a round, copied into the round's record when present.
SECURE_FIELDS = ("survivors", "dropped", "error_bound", "pipelined")
# Server-side optimizer state of Flower's strategies, checkpointed so that a resumed run takes
# the same steps: FedAdagrad/FedAdam/FedYogi's moments (dicts), FedAvgM's momentum (a list).
STRATEGY_STATE = ("m_t", "v_t", "momentum_vector")


def _innermost(strategy: Strategy) -> Strategy:
    # A wrapper (SecureAggregation) holds the strategy whose update it feeds.
    while isinstance(vars(strategy).get("strategy"), Strategy):
        strategy = vars(strategy)["strategy"]
    return strategy


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """The server-side arrays of ``strategy`` (or of the strategy it wraps), by ``attr:key``."""
    target, out = _innermost(strategy), {}
    for attr in STRATEGY_STATE:
        value = getattr(target, attr, None)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        out.update({f"{attr}:{key}": np.asarray(v) for key, v in items})
    return out


def load_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Puts arrays saved by :func:`strategy_state` back into ``strategy`` (or the one it wraps)."""
    target = _innermost(strategy)
    for attr in STRATEGY_STATE:
        items = [(name.split(":", 1)[1], value) for name, value in state.items() if name.split(":", 1)[0] == attr]
        if items:
            setattr(target, attr, [v for _, v in items] if attr == "momentum_vector" else dict(items))


def new_global_model(settings: FedSettings) -> Any:
    """The run's freshly initialized model (the user's task's, or the built-in MLP)."""
    if settings.task:
        return UserTask(settings.task, settings.seed).model()
    return load_model(settings.dataset, settings.hidden, settings.seed)


def initial_weights(settings: FedSettings) -> dict[str, np.ndarray]:
    """The initial global model as ``{name: array}``, fixed by ``settings.seed``."""
    return to_numpy(get_weights(new_global_model(settings)))


def evaluate_global(settings: FedSettings, weights: dict[str, Any]) -> tuple[float | None, float | None]:
    """Test loss and accuracy of ``weights`` on the held-out test split.

    A user's task module without ``load_centralized_dataset`` has none: (None, None).
    """
    model = new_global_model(settings)
    set_weights(model, from_numpy(weights))
    if settings.task:
        return UserTask(settings.task, settings.seed).central_evaluate(model) or (None, None)
    return test(model, load_test_data(settings.dataset))


def make_strategy(settings: FedSettings) -> Strategy:
    """The aggregation ``settings.aggregation`` names.

    Args:
        settings: The run (``settings.secagg`` holds secure aggregation's parameters).

    Returns:
        ``plain``: :class:`RobustFedAvg` (replies in partition order, the reply minimum).
        ``secure``: ``SecureAggregation(FedAvg(...))``: the server learns only the clients'
        weighted sum (see :mod:`federated.secure_aggregation`).
    """
    common = dict(fraction_train=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
                  min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
                  # Only the reply minimum is required: a SuperNode that died mid-run must not
                  # hold later rounds (every node is awaited once, before the first round).
                  min_available_nodes=max(settings.min_replies, 2 if settings.aggregation == "secure" else 1))
    if settings.aggregation == "plain":
        return RobustFedAvg(min_replies=settings.min_replies, min_train_nodes=settings.min_replies, **common)
    from flwr.serverapp.strategy import FedAvg

    from federated.secure_aggregation import SecureAggregation

    return SecureAggregation(FedAvg(min_train_nodes=max(2, settings.min_replies), **common),
                             settings.secagg, timeout=settings.round_timeout,
                             num_rounds=settings.num_server_rounds)


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    """Blocks until ``count`` nodes are connected (at most ``timeout`` s).

    Flower's strategies size their sample from the nodes connected *before* they wait for
    the minimum, so a round that starts while SuperNodes are still registering would sample
    fewer.
    """
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {count} nodes connected within "
                               f"{timeout:.0f} s")
        time.sleep(0.2)


def _exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    from federated.secure_aggregation import exchange

    return exchange(grid, list(messages), timeout)


def _tally(sent: int, replies: list[Message], strategy: Strategy) -> dict[str, Any]:
    """Successes, failures and secure-aggregation counts of one training round."""
    ok = sum(1 for m in replies if not m.has_error())
    seconds = [float(next(iter(m.content.metric_records.values()), {}).get("train-seconds", 0.0))
               for m in replies if not m.has_error()]
    out: dict[str, Any] = {}
    secure = getattr(strategy, "last_round", None)
    if secure is not None and all(hasattr(secure, f) for f in SECURE_FIELDS):
        # The masking replies are not the survivors: a client may still drop while unmasking.
        out = {f: getattr(secure, f) for f in SECURE_FIELDS}
        ok = int(secure.survivors)
    return {"replies": ok, "failures": max(sent - ok, 0), "slowest": max(seconds, default=0.0), "secure": out}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


#: Builds a round's record after aggregation: (round, new weights, new arrays, train metrics,
#: tally of the replies, round start time) -> the record's fields after ``round``.
RoundRecord = Callable[[int, dict[str, np.ndarray], Any, Any, dict[str, Any], float], dict[str, Any]]


def fedavg_rounds(grid: Grid, strategy: Strategy, *, num_rounds: int, min_replies: int, round_timeout: float,
                  checkpoint_dir: str, resume: bool, initial: Callable[[], dict[str, np.ndarray]],
                  round_zero: Callable[[dict[str, np.ndarray]], dict[str, Any]],
                  nodes: Callable[[int, int], int], record: RoundRecord,
                  on_round: RoundCallback | None = None) -> dict[str, Any]:
    """The one FedAvg round loop, plain or secure (whatever ``strategy`` is), with checkpoints.

    Every round: wait for ``nodes(round, first round of this process)`` SuperNodes, send the
    global weights through ``strategy.configure_train``, collect the replies, aggregate, check
    ``min_replies``, and checkpoint the new weights, the history and the strategy's own state
    (npz + JSON), so that ``resume`` continues where an interrupted run stopped. What a
    round's record holds beside ``round`` is the caller's (``round_zero`` for the start,
    ``record`` for every round): the FedAvg on digits records test accuracy, federated MAPPO
    its return.

    Returns:
        ``{"weights": final {name: array}, "history": [record per round, round 0 first]}``.

    Raises:
        TooFewReplies: when a round has fewer than ``min_replies`` successes; the checkpoint of
            the previous round stays as it was.
    """
    state = load_server_checkpoint(checkpoint_dir) if checkpoint_dir and resume else None
    if state is not None:
        weights, history, start = state["weights"], list(state["history"]), state["round"] + 1
        load_strategy_state(strategy, state["state"])
    else:
        weights = initial()
        history = [{"round": 0, **round_zero(weights)}]
        start = 1
        if checkpoint_dir:
            save_server_checkpoint(checkpoint_dir, 0, weights, history)
        if on_round:
            on_round(history[0])
    for server_round in range(start, num_rounds + 1):
        t0 = time.perf_counter()
        wait_for_nodes(grid, nodes(server_round, start), round_timeout)
        messages = list(strategy.configure_train(server_round, from_numpy(weights), ConfigRecord(), grid))
        replies = _exchange(grid, messages, round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        tally = _tally(len(messages), replies, strategy)
        if new_arrays is None or tally["replies"] < min_replies:
            raise TooFewReplies(
                f"round {server_round}: {tally['replies']} of {len(messages)} clients replied successfully, "
                f"fewer than min_replies={min_replies}; stopping (the checkpoint of round "
                f"{server_round - 1} is kept)")
        weights = to_numpy(new_arrays)
        history.append({"round": server_round, **record(server_round, weights, new_arrays, train_metrics, tally, t0)})
        if checkpoint_dir:
            save_server_checkpoint(checkpoint_dir, server_round, weights, history, strategy_state(strategy))
        if on_round:
            on_round(history[-1])
    return {"weights": weights, "history": history}


def run_rounds(grid: Grid, settings: FedSettings, on_round: RoundCallback | None = None, *,
               strategy: Strategy | None = None) -> dict[str, Any]:
    """Runs FedAvg for ``settings.num_server_rounds`` rounds on ``grid``, plain or secure.

    Args:
        grid: Flower's Grid (simulation or deployment engine).
        settings: The run's settings.
        on_round: Called with each round's record as it completes.
        strategy: The aggregation; default :func:`make_strategy` ``(settings)``.

    Returns:
        ``{"weights": final {name: array}, "history": [record per round, round 0 first]}``.
        A record holds deterministic values (``round``, ``train_loss``, ``test_loss``,
        ``test_acc``, ``replies``, ``failures``, ``eval_acc``; in secure runs also
        ``survivors``, ``dropped``, ``error_bound`` and ``pipelined``) and, under
        ``timing``, the wall-clock ones (``round_seconds``, ``slowest_client_seconds``).

    Raises:
        TooFewReplies: when a round has fewer than ``settings.min_replies`` successes; the
            checkpoint of the previous round stays as it was. A secure round that loses
            too many clients to unmask raises the secure strategy's error, with the same
            effect.
    """
    strategy = strategy if strategy is not None else make_strategy(settings)

    def round_zero(weights: dict[str, np.ndarray]) -> dict[str, Any]:
        test_loss, test_acc = evaluate_global(settings, weights)
        return {"train_loss": None, "test_loss": test_loss, "test_acc": test_acc, "replies": 0, "failures": 0,
                "eval_acc": None, "timing": {}}

    def nodes(server_round: int, start: int) -> int:
        # All nodes before the first round (they may still be registering); after it, the
        # nodes left are enough while they can meet min_replies (a dead one is not awaited).
        return settings.num_partitions if server_round == start else settings.min_replies

    def record(server_round: int, weights: dict[str, np.ndarray], new_arrays: Any, train_metrics: Any,
               tally: dict[str, Any], t0: float) -> dict[str, Any]:
        eval_acc = None
        if settings.fraction_evaluate > 0:
            eval_msgs = strategy.configure_evaluate(server_round, new_arrays, ConfigRecord(), grid)
            eval_metrics = strategy.aggregate_evaluate(
                server_round, _exchange(grid, eval_msgs, settings.round_timeout))
            if eval_metrics is not None and "eval_acc" in eval_metrics:
                eval_acc = float(eval_metrics["eval_acc"])
        test_loss, test_acc = evaluate_global(settings, weights)
        # Flower's log: what `flwr run --stream` shows of each round.
        log(INFO, "round %d/%d: test_acc %s, test_loss %s, %d replies, %d failures", server_round,
            settings.num_server_rounds, _fmt(test_acc), _fmt(test_loss), tally["replies"], tally["failures"])
        return {
            "train_loss": float(train_metrics["train_loss"]) if train_metrics and "train_loss" in train_metrics
            else None,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "replies": tally["replies"],
            "failures": tally["failures"],
            "eval_acc": eval_acc,
            **tally["secure"],
            "timing": {"round_seconds": time.perf_counter() - t0, "slowest_client_seconds": tally["slowest"]},
        }

    return fedavg_rounds(grid, strategy, num_rounds=settings.num_server_rounds, min_replies=settings.min_replies,
                         round_timeout=settings.round_timeout, checkpoint_dir=settings.checkpoint_dir,
                         resume=settings.resume, initial=lambda: initial_weights(settings), round_zero=round_zero,
                         nodes=nodes, record=record, on_round=on_round)


def make_server_app(overrides: dict[str, Any] | None = None, sink: list[Any] | None = None,
                    on_round: RoundCallback | None = None,
                    strategy: Callable[[FedSettings], Strategy] | None = None) -> ServerApp:
    """A ServerApp whose settings are ``Context.run_config`` updated with ``overrides``.

    Args:
        overrides: Run-config keys that win over the context's (the simulation engine's
            Python API starts apps with an empty run config).
        sink: If given, the result of :func:`run_rounds` is appended to it (same process), or
            the exception that stopped it (then also raised).
        on_round: Called with each round's record.
        strategy: ``f(settings) -> Strategy`` replacing :func:`make_strategy`.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # The run config is read once, into the run's one settings model.
        settings = FedSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        try:
            chosen = (strategy or make_strategy)(settings)
            result: Any = run_rounds(grid, settings, on_round, strategy=chosen)
        except Exception as exc:
            # The simulation engine may wrap it in its own RuntimeError; the sink keeps the cause.
            if sink is not None:
                sink.append(exc)
            raise
        if sink is not None:
            sink.append(result)

    return server_app


app = make_server_app()
