"""The project's secure ClientApp: a plain train handler plus :data:`federated.secure_agg_mod`.

The same app serves plain FedAvg rounds (the mod passes them through) and secure ones (the
mod runs the protocol and calls the handler for the masking message), which is how a user's
app is secured too. The training itself is a pluggable function (the default trains
:mod:`federated.task`'s MLP on this node's partition), which lets the benchmark swap in a
synthetic model of any size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.arrays import from_numpy, to_numpy
from federated.secure_mod import make_secure_agg_mod, secure_agg_mod

LocalTrain = Callable[[ArrayRecord, Context, int], tuple[dict[str, np.ndarray], int, float]]


def train_task_model(arrays: ArrayRecord | Mapping[str, np.ndarray], context: Context, server_round: int,
                     overrides: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], int, float]:
    """The default local training: this node's Agent (:func:`federated.client_app.client_agent`).

    Args:
        arrays: The global model, as an ArrayRecord or as numpy arrays by state-dict name
            (what a legacy NumPyClient holds).
        context: This node's context (partition id, run config).
        server_round: The round; seeds the shuffling.
        overrides: Run-config keys that win over the context's.

    Returns:
        The trained weights, the number of local examples, and the mean training loss.
    """
    from envs.api import DataSource, Learner
    from federated.client_app import client_agent, new_model
    from federated.settings import FedSettings
    from federated.task import derive_seed, get_weights, set_weights

    torch.set_num_threads(1)  # one thread per client: the same update on every engine
    settings = FedSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
    agent = client_agent(context, settings)
    model = new_model(settings)
    set_weights(model, arrays if isinstance(arrays, ArrayRecord) else from_numpy(arrays))
    data = agent.get(DataSource)
    seed = derive_seed(settings.seed, server_round, int(context.node_config["partition-id"]))
    metrics = agent.get(Learner).fit(model, data, seed)
    return to_numpy(get_weights(model)), data.num_examples(), float(metrics["train_loss"])


def make_secure_client_app(overrides: dict[str, Any] | None = None, local_train: LocalTrain | None = None, *,
                           seed: int | None = None, identity: Any = None,
                           allow_semi_honest: bool | None = None) -> ClientApp:
    """The project's ClientApp: one plain train handler, secured by :data:`federated.secure_agg_mod`.

    It is built exactly as a user's app would be: the handler trains and returns arrays and
    ``num-examples``/``train_loss``; the mod answers the protocol and masks the update.

    Args:
        overrides: Run-config keys that win over the context's (as in federated.client_app).
        local_train: ``f(arrays, context, server_round) -> (weights, num_examples, loss)``;
            defaults to :func:`train_task_model`.
        seed: A reproducible seed for the nodes' secrets (tests only; by default they come
            from the OS, or from the node config key ``secagg-seed``).
        identity: ``f(context) -> (identity_key, trusted_keys)`` for active sessions (see
            :func:`federated.secure_mod.make_secure_agg_mod`); by default the node config's key files.
        allow_semi_honest: Whether nodes with an identity also join semi-honest sessions.
    """
    custom = seed is not None or identity is not None or allow_semi_honest is not None
    mod = make_secure_agg_mod(seed=seed, identity=identity, allow_semi_honest=allow_semi_honest) if custom \
        else secure_agg_mod
    app = ClientApp(mods=[mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content["config"]["server-round"])
        arrays = msg.content["arrays"]
        if local_train is not None:
            weights, num_examples, loss = local_train(arrays, context, server_round)
        else:
            weights, num_examples, loss = train_task_model(arrays, context, server_round, overrides)
        record = from_numpy(weights)
        metrics = MetricRecord({"train_loss": float(loss), "num-examples": int(num_examples)})
        return Message(content=RecordDict({"arrays": record, "metrics": metrics}), reply_to=msg)

    return app


app = make_secure_client_app()
