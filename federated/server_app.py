"""The ServerApp: broadcast the global model, average the replies, evaluate, checkpoint.

A thin adapter over :mod:`federated.task` and :class:`federated.strategy.RobustFedAvg`. The
round loop is the one of ``Strategy.start`` with three additions a long run needs: it can
begin at a later round (resume), it checkpoints after every round, and it records each
round (centralized test accuracy on the held-out split, replies and failures, times).

``app`` is what ``flwr run .`` and the deployment engine load (``federated.server_app:app``);
:func:`make_server_app` builds one with fixed settings for the simulation engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from federated.checkpoint import load_server_checkpoint, save_server_checkpoint
from federated.settings import FedSettings
from federated.strategy import RobustFedAvg
from federated.task import (
    get_weights,
    load_model,
    load_test_data,
    numpy_to_weights,
    set_weights,
    test,
    weights_to_numpy,
)

RoundCallback = Callable[[dict[str, Any]], None]


def evaluate_global(settings: FedSettings, weights: dict[str, Any]) -> tuple[float, float]:
    """Test loss and accuracy of ``weights`` on the held-out test split."""
    model = load_model(settings.dataset, settings.hidden, settings.seed)
    set_weights(model, numpy_to_weights(weights))
    return test(model, load_test_data(settings.dataset))


def run_rounds(grid: Grid, settings: FedSettings, on_round: RoundCallback | None = None) -> dict[str, Any]:
    """Runs FedAvg for ``settings.num_server_rounds`` rounds on ``grid``.

    Args:
        grid: Flower's Grid (simulation or deployment engine).
        settings: The run's settings.
        on_round: Called with each round's record as it completes.

    Returns:
        ``{"weights": final {name: array}, "history": [record per round, round 0 first]}``.
        A record holds deterministic values (``round``, ``train_loss``, ``test_loss``,
        ``test_acc``, ``replies``, ``failures``, ``eval_acc``) and, under ``timing``, the
        wall-clock ones (``round_seconds``, ``slowest_client_seconds``).

    Raises:
        TooFewReplies: when a round has fewer than ``settings.min_replies`` successes; the
            checkpoint of the previous round stays as it was.
    """
    strategy = RobustFedAvg(
        min_replies=settings.min_replies,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_replies,
        min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.num_partitions,
    )
    state = load_server_checkpoint(settings.checkpoint_dir) if settings.checkpoint_dir and settings.resume else None
    if state is not None:
        weights, history, start = state["weights"], list(state["history"]), state["round"] + 1
    else:
        weights = weights_to_numpy(get_weights(load_model(settings.dataset, settings.hidden, settings.seed)))
        test_loss, test_acc = evaluate_global(settings, weights)
        history = [{"round": 0, "train_loss": None, "test_loss": test_loss, "test_acc": test_acc,
                    "replies": 0, "failures": 0, "eval_acc": None, "timing": {}}]
        start = 1
        if on_round:
            on_round(history[0])
    for server_round in range(start, settings.num_server_rounds + 1):
        t0 = time.perf_counter()
        arrays = numpy_to_weights(weights)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=settings.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        replies_info = strategy.last_round
        weights = weights_to_numpy(new_arrays)
        eval_acc = None
        if settings.fraction_evaluate > 0:
            eval_msgs = strategy.configure_evaluate(server_round, new_arrays, ConfigRecord(), grid)
            eval_metrics = strategy.aggregate_evaluate(
                server_round, grid.send_and_receive(eval_msgs, timeout=settings.round_timeout))
            eval_acc = None if eval_metrics is None else float(eval_metrics["eval_acc"])
        test_loss, test_acc = evaluate_global(settings, weights)
        record = {
            "round": server_round,
            "train_loss": float(train_metrics["train_loss"]) if train_metrics else None,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "replies": replies_info.ok,
            "failures": replies_info.failures,
            "eval_acc": eval_acc,
            "timing": {"round_seconds": time.perf_counter() - t0,
                       "slowest_client_seconds": replies_info.slowest_train_seconds},
        }
        history.append(record)
        if settings.checkpoint_dir:
            save_server_checkpoint(settings.checkpoint_dir, server_round, weights, history)
        if on_round:
            on_round(record)
    return {"weights": weights, "history": history}


def make_server_app(overrides: dict[str, Any] | None = None, sink: list[Any] | None = None,
                    on_round: RoundCallback | None = None) -> ServerApp:
    """A ServerApp whose settings are ``Context.run_config`` updated with ``overrides``.

    Args:
        overrides: Run-config keys that win over the context's (the simulation engine's
            Python API starts apps with an empty run config).
        sink: If given, the result of :func:`run_rounds` is appended to it (same process), or
            the exception that stopped it (then also raised).
        on_round: Called with each round's record.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = FedSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        try:
            result: Any = run_rounds(grid, settings, on_round)
        except Exception as exc:
            # The simulation engine may wrap it in its own RuntimeError; the sink keeps the cause.
            if sink is not None:
                sink.append(exc)
            raise
        if sink is not None:
            sink.append(result)

    return server_app


app = make_server_app()
