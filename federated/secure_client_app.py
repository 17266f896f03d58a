"""The ClientApp side of :class:`federated.secure_fedavg.SecureFedAvg`: four message handlers.

Each handler restores this node's :class:`secure_agg.SecAggClient` from ``context.state``,
answers one round, and stores it back, so the protocol state survives between messages in
both the simulation and the deployment engine. The training itself is a pluggable function
(the default trains :mod:`federated.task`'s MLP on this node's partition), which lets the
benchmark swap in a synthetic model of any size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federated.secure_fedavg import (
    MASK,
    PAYLOAD,
    SETUP,
    SHARE,
    UNMASK,
    SecAggParams,
    client_vector,
    split_run_config,
)
from secure_agg import SecAggClient
from secure_agg.wire import decode, encode

STATE_KEY = "secagg-client"
LocalTrain = Callable[[ArrayRecord, Context, int], tuple[dict[str, np.ndarray], int, float]]


def train_task_model(arrays: ArrayRecord, context: Context, server_round: int,
                     overrides: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], int, float]:
    """The default local training: federated.task's MLP on this node's partition.

    Returns:
        The trained weights, the number of local examples, and the mean training loss.
    """
    from federated.client_app import local_update
    from federated.settings import FedSettings
    from federated.task import get_weights, load_model, set_weights, weights_to_numpy

    torch.set_num_threads(1)  # one thread per client: the same update on every engine
    rest, _ = split_run_config({**dict(context.run_config), **(overrides or {})})
    settings = FedSettings.from_run_config(rest)
    pid = int(context.node_config["partition-id"])
    model = load_model(settings.dataset, settings.hidden, settings.seed)
    set_weights(model, arrays)
    n, loss = local_update(settings, pid, server_round, model)
    return weights_to_numpy(get_weights(model)), n, loss


def _reply(msg: Message, payload: bytes) -> Message:
    return Message(content=RecordDict({PAYLOAD: ConfigRecord({"payload": payload})}), reply_to=msg)


def _load(context: Context) -> tuple[SecAggClient, np.ndarray]:
    if STATE_KEY not in context.state:
        raise ValueError("no secure-aggregation session on this node: the setup message never arrived")
    record = context.state[STATE_KEY]
    return SecAggClient.from_bytes(record["client"]), decode(record["vector"])


def _save(context: Context, client: SecAggClient, vector: np.ndarray) -> None:
    context.state[STATE_KEY] = ConfigRecord({"client": client.to_bytes(), "vector": encode(vector)})


def make_secure_client_app(overrides: dict[str, Any] | None = None, local_train: LocalTrain | None = None) -> ClientApp:
    """A ClientApp that answers SecureFedAvg's four message types.

    Args:
        overrides: Run-config keys that win over the context's (as in federated.client_app).
        local_train: ``f(arrays, context, server_round) -> (weights, num_examples, loss)``;
            defaults to :func:`train_task_model`.
    """
    app = ClientApp()

    def trainer(arrays: ArrayRecord, context: Context, server_round: int) -> tuple[dict[str, np.ndarray], int, float]:
        if local_train is not None:
            return local_train(arrays, context, server_round)
        return train_task_model(arrays, context, server_round, overrides)

    @app.train()
    def plain_train(msg: Message, context: Context) -> Message:
        # The plain FedAvg reference in the same run: same training, update sent in the clear.
        from flwr.app import Array, MetricRecord

        weights, num_examples, loss = trainer(msg.content["arrays"], context, int(msg.content["config"]["server-round"]))
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})
        metrics = MetricRecord({"train_loss": loss, "num-examples": num_examples})
        return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.train(SETUP)
    def setup(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        params = SecAggParams.from_run_config({k: v for k, v in dict(config).items() if k.startswith("secagg-")
                                               and k not in ("secagg-id", "secagg-clients")})
        server_round, pid, n = int(config["server-round"]), int(config["secagg-id"]), int(config["secagg-clients"])
        weights, num_examples, loss = trainer(msg.content["arrays"], context, server_round)
        vector = client_vector(weights, num_examples, loss, params, n)
        seed = None if params.seed < 0 else f"{params.seed}-round-{server_round}-client-{pid}"
        client = SecAggClient(pid, seed=seed)
        reply = client.advertise_keys(msg.content[PAYLOAD]["payload"])
        _save(context, client, vector)
        return _reply(msg, reply)

    @app.train(SHARE)
    def share(msg: Message, context: Context) -> Message:
        client, vector = _load(context)
        reply = client.share_keys(msg.content[PAYLOAD]["payload"])
        _save(context, client, vector)
        return _reply(msg, reply)

    @app.train(MASK)
    def mask(msg: Message, context: Context) -> Message:
        client, vector = _load(context)
        reply = client.masked_input(msg.content[PAYLOAD]["payload"], vector)
        _save(context, client, vector)
        return _reply(msg, reply)

    @app.train(UNMASK)
    def unmask(msg: Message, context: Context) -> Message:
        client, _ = _load(context)
        reply = client.unmasking(msg.content[PAYLOAD]["payload"])
        del context.state[STATE_KEY]  # the session is over: forget every secret
        return _reply(msg, reply)

    return app


app = make_secure_client_app()
