"""The ClientApp: train the received global model on local data, or evaluate it there.

A Flower client is an :class:`envs.Agent` (:func:`client_agent`) holding three capabilities
that the running path calls: its partition (a ``DataSource``), its local training (a
``Learner``) and its secure-aggregation masking (a ``Masker``, called by
:data:`federated.secure_agg_mod` where it masks the update)::

    agent = client_agent(context, settings)
    metrics = agent.get(Learner).fit(model, agent.get(DataSource), seed)

The data and training come from :mod:`federated.task` (the built-in MLP on a partition of
digits or breast cancer) or, when the run config names one (``task``), from a user's task
module (:class:`federated.task.UserTask`): either way the same Agent path runs. Each
SuperNode knows only its ``partition-id`` (node config); its data never leaves it. The batch
order is seeded from (seed, round, partition), so a round gives the same update whichever
process or engine runs it. The settings are read once per message from ``Context.run_config``
into :class:`federated.settings.FedSettings`.

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

from envs.api import Agent, DataSource, Learner, Masker
from federated.secure_mod import SessionMasker, make_secure_agg_mod
from federated.settings import FedSettings
from federated.task import (
    PartitionData,
    SGDLearner,
    UserTask,
    derive_seed,
    get_weights,
    load_data,
    load_model,
    set_weights,
    test,
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


def task_capabilities(settings: FedSettings, partition_id: int) -> tuple[DataSource, Learner]:
    """Partition ``partition_id``'s data source and local learner, of the user's task or the built-in one."""
    if settings.task:
        task = UserTask(settings.task, settings.seed)
        return task.data(partition_id, settings.num_partitions), task.learner(settings.local_epochs, settings.lr)
    data = PartitionData(settings.dataset, partition_id, settings.num_partitions, settings.partitioner,
                         settings.alpha, settings.classes_per_client, batch_size=settings.batch_size,
                         seed=settings.seed)
    return data, SGDLearner(settings.local_epochs, settings.lr)


def client_agent(context: Context, settings: FedSettings) -> Agent:
    """This SuperNode as an Agent: its partition, its local learner, its secure-aggregation masking."""
    pid = _partition(context, settings)
    data, learner = task_capabilities(settings, pid)
    return Agent(f"partition-{pid}", capabilities=[data, learner, SessionMasker(context)])


def local_update(settings: FedSettings, partition_id: int, server_round: int,
                 model: torch.nn.Module) -> tuple[int, float]:
    """One client's round of local training on ``model`` (in place), seeded by round and client.

    The same capabilities as :func:`client_agent`'s, without a Flower context (for in-process
    references such as :func:`federated.reference.plain_fedavg`).

    Returns:
        The number of local training examples and the mean training loss.
    """
    data, learner = task_capabilities(settings, partition_id)
    metrics = learner.fit(model, data, derive_seed(settings.seed, server_round, partition_id))
    return data.num_examples(), float(metrics["train_loss"])


def new_model(settings: FedSettings) -> torch.nn.Module:
    """The run's freshly initialized model: the user's task's or the built-in MLP."""
    if settings.task:
        return UserTask(settings.task, settings.seed).model()
    return load_model(settings.dataset, settings.hidden, settings.seed)


def client_train(msg: Message, context: Context, settings: FedSettings) -> Message:
    """Trains the message's model with this node's Agent and replies with the update."""
    agent = client_agent(context, settings)
    pid = _partition(context, settings)
    server_round = int(msg.content["config"]["server-round"])
    _inject(settings, server_round, pid)
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # one thread per client: deterministic sums, no oversubscription
    model = new_model(settings)
    set_weights(model, msg.content["arrays"])
    data = agent.get(DataSource)
    metrics = agent.get(Learner).fit(model, data, derive_seed(settings.seed, server_round, pid))
    record = MetricRecord({"train_loss": float(metrics["train_loss"]), "num-examples": data.num_examples(),
                           "partition-id": pid, "train-seconds": time.perf_counter() - t0})
    return Message(content=RecordDict({"arrays": get_weights(model), "metrics": record}), reply_to=msg)


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
    the protocol and masks the train handler's update with the node's Agent's Masker.
    """

    def settings_of(context: Context) -> FedSettings:
        return FedSettings.from_run_config({**dict(context.run_config), **(overrides or {})})

    def masker_of(context: Context) -> Masker:
        return client_agent(context, settings_of(context)).get(Masker)

    client_app = ClientApp(mods=[make_secure_agg_mod(masker=masker_of)])

    @client_app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        return client_train(msg, context, settings_of(context))

    @client_app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, settings_of(context))

    return client_app


app = make_client_app()
