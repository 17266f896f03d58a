"""FedAvg in a plain Python loop, without Flower: the reference the engines are checked against.

The same clients (:func:`federated.client_app.local_update`), the same seeds and the same
average (:func:`federated.strategy.fedavg`, clients in partition order), one after another
in this process. A Flower run of the same settings must end with the same model bit for bit;
the benchmark times it to separate client compute from the engine's overhead.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from federated.arrays import from_numpy, to_numpy
from federated.client_app import local_update
from federated.server_app import evaluate_global
from federated.settings import FedSettings
from federated.strategy import fedavg
from federated.task import get_weights, load_model, set_weights


def plain_fedavg(settings: FedSettings, *, evaluate: bool = True) -> dict[str, Any]:
    """Runs ``settings`` as a loop; injected ``raise``/``exit``/``hang`` faults drop that client.

    Returns:
        ``{"weights": final {name: array}, "history": [...]}`` with per-round ``test_acc``
        (when ``evaluate``) and, under ``timing``, ``client_seconds`` (one per client) and
        ``round_seconds``.
    """
    torch.set_num_threads(1)
    weights = to_numpy(get_weights(load_model(settings.dataset, settings.hidden, settings.seed)))
    history: list[dict[str, Any]] = []
    for server_round in range(1, settings.num_server_rounds + 1):
        t0 = time.perf_counter()
        updates, counts, seconds = [], [], []
        for pid in range(settings.num_partitions):
            if settings.fault_for(server_round, pid) is not None:
                continue
            c0 = time.perf_counter()
            model = load_model(settings.dataset, settings.hidden, settings.seed)
            set_weights(model, from_numpy(weights))
            n, _ = local_update(settings, pid, server_round, model)
            updates.append(to_numpy(get_weights(model)))
            counts.append(n)
            seconds.append(time.perf_counter() - c0)
        if len(updates) < settings.min_replies:
            raise RuntimeError(f"round {server_round}: {len(updates)} clients left, fewer than min_replies="
                               f"{settings.min_replies}")
        weights = fedavg(updates, counts)
        record: dict[str, Any] = {"round": server_round,
                                  "timing": {"client_seconds": seconds, "round_seconds": time.perf_counter() - t0}}
        if evaluate:
            record["test_loss"], record["test_acc"] = evaluate_global(settings, weights)
        history.append(record)
    return {"weights": weights, "history": history}
