"""The ClientApp side of :class:`federated.secure_fedavg.SecureFedAvg`: four message handlers.

Each handler restores this node's :class:`secure_agg.SecAggClient` from ``context.state``,
answers one round, and stores it back, so the protocol state survives between messages in
both the simulation and the deployment engine. A node holds at most two sessions: the
current one and, from the masking message on, the next one whose keys and shares ride on the
current round's messages (see :mod:`federated.secure_fedavg`). Only key material is kept
between messages; the model update is trained, masked and sent within one message. The
training itself is a pluggable function (the default trains :mod:`federated.task`'s MLP on
this node's partition), which lets the benchmark swap in a synthetic model of any size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federated.secure_fedavg import (
    MASK,
    NEXT,
    PAYLOAD,
    SETUP,
    SHARE,
    THIS,
    UNMASK,
    SecAggParams,
    client_vector,
    split_run_config,
)
from secure_agg import SecAggClient, SecAggError

STATE_KEY = "secagg-client"  # this session's client
STATE_NEXT = "secagg-next-client"  # the next session's, once its keys went out
LocalTrain = Callable[[ArrayRecord, Context, int], tuple[dict[str, np.ndarray], int, float]]


def train_task_model(arrays: ArrayRecord | Mapping[str, np.ndarray], context: Context, server_round: int,
                     overrides: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], int, float]:
    """The default local training: federated.task's MLP on this node's partition.

    Args:
        arrays: The global model, as an ArrayRecord or as numpy arrays by state-dict name
            (what a legacy NumPyClient holds).
        context: This node's context (partition id, run config).
        server_round: The round; seeds the shuffling.
        overrides: Run-config keys that win over the context's.

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
    if isinstance(arrays, ArrayRecord):
        set_weights(model, arrays)
    else:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True)
    n, loss = local_update(settings, pid, server_round, model)
    return weights_to_numpy(get_weights(model)), n, loss


def _reply(msg: Message, payload: bytes, nxt: bytes | None = None) -> Message:
    record = {THIS: payload, **({NEXT: nxt} if nxt is not None else {})}
    return Message(content=RecordDict({PAYLOAD: ConfigRecord(record)}), reply_to=msg)


def _load(context: Context, key: str = STATE_KEY) -> SecAggClient:
    if key not in context.state:
        raise ValueError("no secure-aggregation session on this node: its opening messages never arrived")
    return SecAggClient.from_bytes(context.state[key]["client"])


def _save(context: Context, client: SecAggClient, key: str = STATE_KEY) -> None:
    context.state[key] = ConfigRecord({"client": client.to_bytes()})


def _forget(context: Context, *keys: str) -> None:
    for key in keys:
        if key in context.state:
            del context.state[key]


def _params(config: Any) -> tuple[SecAggParams, int, int, int]:
    """(parameters, server round, this client's id, clients in the session) from a message's config."""
    params = SecAggParams.from_run_config({k: v for k, v in dict(config).items() if k.startswith("secagg-")
                                           and k not in ("secagg-id", "secagg-clients")})
    return params, int(config["server-round"]), int(config["secagg-id"]), int(config["secagg-clients"])


def _new_client(params: SecAggParams, server_round: int, pid: int) -> SecAggClient:
    seed = None if params.seed < 0 else f"{params.seed}-round-{server_round}-client-{pid}"
    return SecAggClient(pid, seed=seed)


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
        # A fresh session: whatever this node held from an earlier one is void.
        params, server_round, pid, _ = _params(msg.content["config"])
        _forget(context, STATE_KEY, STATE_NEXT)
        client = _new_client(params, server_round, pid)
        reply = client.advertise_keys(msg.content[PAYLOAD][THIS])
        _save(context, client)
        return _reply(msg, reply)

    @app.train(SHARE)
    def share(msg: Message, context: Context) -> Message:
        client = _load(context)
        reply = client.share_keys(msg.content[PAYLOAD][THIS])
        _save(context, client)
        return _reply(msg, reply)

    @app.train(MASK)
    def mask(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        params, server_round, pid, n = _params(config)
        client = _load(context)
        weights, num_examples, loss = trainer(msg.content["arrays"], context, server_round)
        reply = client.masked_input(msg.content[PAYLOAD][THIS], client_vector(weights, num_examples, loss, params, n))
        _save(context, client)
        nxt = None
        if NEXT in msg.content[PAYLOAD]:
            following = _new_client(params, server_round + 1, pid)
            try:
                nxt = following.advertise_keys(msg.content[PAYLOAD][NEXT])
                _save(context, following, STATE_NEXT)
            except SecAggError:
                pass  # refusing the next session must not cost this one: the server then opens a fresh one
        return _reply(msg, reply, nxt)

    @app.train(UNMASK)
    def unmask(msg: Message, context: Context) -> Message:
        reply = _load(context).unmasking(msg.content[PAYLOAD][THIS])
        _forget(context, STATE_KEY)  # this session is over: forget its secrets
        nxt = None
        if NEXT in msg.content[PAYLOAD] and STATE_NEXT in context.state:
            following = _load(context, STATE_NEXT)
            try:
                nxt = following.share_keys(msg.content[PAYLOAD][NEXT])
                _save(context, following)
            except SecAggError:
                pass
        _forget(context, STATE_NEXT)
        return _reply(msg, reply, nxt)

    return app


app = make_secure_client_app()
