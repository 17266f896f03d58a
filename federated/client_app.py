"""The ClientApp: train the received global model on local data, or evaluate it there.

Each SuperNode knows only its ``partition-id`` (node config); the data it trains on is that
partition and never leaves it. The batch order is seeded from (seed, round, partition), so
a round gives the same update whichever process or engine runs it.

The model, data and training come from :mod:`federated.task` (the built-in MLP) or, when the
run config names one (``task``), from a user's task module (:class:`federated.task.UserTask`).

Injected faults (``faults`` in the run config) make a chosen client raise, exit its process
or hang in a chosen round, to exercise the server's failure handling.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.settings import FedSettings, split_settings
from federated.task import (
    UserTask,
    derive_seed,
    get_weights,
    load_data,
    load_model,
    set_weights,
    test,
    train,
)


class InjectedFault(RuntimeError):
    """The failure a client was configured to show in this round."""


def _partition(context: Context, settings: FedSettings) -> int:
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config.get("num-partitions", settings.num_partitions))
    if n != settings.num_partitions:
        raise ValueError(f"node config num-partitions={n} differs from the run's num-partitions="
                         f"{settings.num_partitions}")
    return pid


def _inject(settings: FedSettings, server_round: int, pid: int) -> None:
    mode = settings.fault_for(server_round, pid)
    if mode == "raise":
        raise InjectedFault(f"client {pid} fails in round {server_round} (injected)")
    if mode == "exit":
        os._exit(17)  # the process dies without replying, as a crashed device would
    if mode == "hang":
        time.sleep(settings.round_timeout * 1.5)
        raise InjectedFault(f"client {pid} hung past the round timeout in round {server_round} (injected)")


def local_update(settings: FedSettings, partition_id: int, server_round: int,
                 model: torch.nn.Module) -> tuple[int, float]:
    """One client's round of local training on ``model`` (in place), seeded by round and client.

    Returns:
        The number of local training examples and the mean training loss.
    """
    loader = load_data(settings.dataset, partition_id, settings.num_partitions, settings.partitioner,
                       settings.alpha, settings.classes_per_client, batch_size=settings.batch_size,
                       seed=settings.seed, shuffle_seed=derive_seed(settings.seed, server_round, partition_id))
    loss = train(model, loader, settings.local_epochs, settings.lr)
    return len(loader.dataset), loss


def new_model(settings: FedSettings) -> torch.nn.Module:
    """The run's freshly initialized model: the user's task's or the built-in MLP."""
    if settings.task:
        return UserTask(settings.task, settings.seed).model()
    return load_model(settings.dataset, settings.hidden, settings.seed)


def fit(settings: FedSettings, arrays: Any, partition_id: int, server_round: int) -> tuple[torch.nn.Module, int, float]:
    """Trains the global ``arrays`` on this client's partition, seeded by round and partition.

    Returns:
        The trained model, the number of local training examples and the mean training loss.
    """
    torch.set_num_threads(1)  # one thread per client: deterministic sums, no oversubscription
    model = new_model(settings)
    set_weights(model, arrays)
    if settings.task:
        n, loss = UserTask(settings.task, settings.seed).fit(model, partition_id, settings.num_partitions,
                                                            server_round, settings.local_epochs, settings.lr)
    else:
        n, loss = local_update(settings, partition_id, server_round, model)
    return model, n, loss


def client_train(msg: Message, context: Context, settings: FedSettings) -> Message:
    """Trains the message's model on this client's partition and replies with the update."""
    pid = _partition(context, settings)
    server_round = int(msg.content["config"]["server-round"])
    _inject(settings, server_round, pid)
    t0 = time.perf_counter()
    model, n, loss = fit(settings, msg.content["arrays"], pid, server_round)
    metrics = MetricRecord({"train_loss": loss, "num-examples": n, "partition-id": pid,
                            "train-seconds": time.perf_counter() - t0})
    return Message(content=RecordDict({"arrays": get_weights(model), "metrics": metrics}), reply_to=msg)


def client_evaluate(msg: Message, context: Context, settings: FedSettings) -> Message:
    """Evaluates the message's model on this client's partition."""
    torch.set_num_threads(1)
    pid = _partition(context, settings)
    model = new_model(settings)
    set_weights(model, msg.content["arrays"])
    if settings.task:
        n, loss, acc = UserTask(settings.task, settings.seed).evaluate(model, pid, settings.num_partitions)
    else:
        loader = load_data(settings.dataset, pid, settings.num_partitions, settings.partitioner, settings.alpha,
                           settings.classes_per_client, batch_size=512, seed=settings.seed)
        (loss, acc), n = test(model, loader), len(loader.dataset)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": n, "partition-id": pid})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose settings are ``Context.run_config`` updated with ``overrides``.

    It carries :data:`federated.secure_agg_mod`, as any user's app would: plain rounds pass
    through to the handlers; in secure rounds (``aggregation = "secure"``) the mod answers
    the protocol and masks the train handler's update.
    """
    from federated.secure_mod import secure_agg_mod

    client_app = ClientApp(mods=[secure_agg_mod])

    def settings_of(context: Context) -> FedSettings:
        return split_settings({**dict(context.run_config), **(overrides or {})})[0]

    @client_app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        return client_train(msg, context, settings_of(context))

    @client_app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, settings_of(context))

    return client_app


app = make_client_app()
