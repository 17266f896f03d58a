"""A Flower client is an envs.Agent: its partition (DataSource), its local training (Learner)
and its secure-aggregation masking (Masker) are what the ClientApp's running path calls.

The update it sends is checked bit for bit against plain torch on the same partition and seed
(the reference in conftest.py, which also equals the client of commit a8b7e4d, before the
Agent), for the built-in task and for a user's task module; the engines' tests
(test_simulation.py, test_deploy.py, test_user_task.py) check whole runs the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs.api import DataSource, Masker
from federated.settings import FedSettings


def _context(settings: FedSettings, partition_id: int):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=40 + partition_id, state=RecordDict(), run_config=settings.to_run_config(),
                   node_config={"partition-id": partition_id, "num-partitions": settings.num_partitions})


def _train(settings: FedSettings, partition_id: int, server_round: int, weights: dict):
    from flwr.app import ConfigRecord, Message, RecordDict

    from federated.arrays import from_numpy
    from federated.client_app import app

    msg = Message(content=RecordDict({"arrays": from_numpy(weights),
                                      "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=40 + partition_id, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"train-{partition_id}"
    reply = app(msg, _context(settings, partition_id))  # the ClientApp as either engine runs it
    assert not reply.has_error(), reply.error
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    return arrays, reply.content["metrics"]


def test_builtin_client_update_equals_plain_torch_bit_for_bit(flower_identity: None, torch_client) -> None:
    from federated.client_app import client_agent
    from federated.server_app import initial_weights

    settings = FedSettings(num_partitions=3, partitioner="dirichlet", alpha=1.0, hidden=12, local_epochs=2,
                           batch_size=10, lr=0.1, seed=5)
    weights = initial_weights(settings)
    for pid, server_round in ((0, 1), (2, 4)):
        arrays, metrics = _train(settings, pid, server_round, weights)
        expected, n = torch_client(settings, weights, pid, server_round)
        assert metrics["num-examples"] == n
        assert list(arrays) == list(expected)
        for key, value in expected.items():
            assert np.array_equal(arrays[key], value), (pid, key)
    # The agent those updates came from: its data source is its partition, nothing else.
    agent = client_agent(_context(settings, 2), settings)
    assert agent.id == "partition-2" and agent.get(DataSource).num_examples() == n


def test_user_task_client_goes_through_the_same_agent_path(flower_identity: None, user_task: str) -> None:
    import torch

    from federated.server_app import initial_weights
    from federated.task import derive_seed

    settings = FedSettings(task=user_task, num_partitions=2, local_epochs=2, lr=0.3, seed=11)
    weights = initial_weights(settings)
    arrays, metrics = _train(settings, 1, 3, weights)

    # Plain calls of the user's functions, torch's generator seeded as the framework promises.
    import mypkg.task as mod

    model = mod.load_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    torch.manual_seed(derive_seed(11, 3, 1))
    loader, _ = mod.load_data(1, 2)
    mod.train(model, loader, 2, 0.3, "cpu")
    assert metrics["num-examples"] == 75  # 3/4 of the second half of 200 rows
    for key, value in model.state_dict().items():
        assert np.array_equal(arrays[key], value.numpy()), key


def test_secure_round_masks_through_the_agents_masker(flower_identity: None, local_grid: type,
                                                      monkeypatch: pytest.MonkeyPatch, torch_reference) -> None:
    import federated.client_app as client_app
    from federated.secure_aggregation import SecAggParams
    from federated.secure_mod import SessionMasker
    from federated.server_app import run_rounds

    masked: list[int] = []

    class CountingMasker(SessionMasker):
        def mask(self, vector: np.ndarray) -> bytes:
            masked.append(len(vector))
            return super().mask(vector)

    # The ClientApp builds each node's Agent with this Masker: the mod must mask through it.
    monkeypatch.setattr(client_app, "SessionMasker", CountingMasker)
    settings = FedSettings(aggregation="secure", num_partitions=3, num_server_rounds=2, hidden=6, local_epochs=1,
                           min_replies=2, secagg=SecAggParams(seed=2))
    result = run_rounds(local_grid(3, settings.to_run_config()), settings)
    dim = 64 * 6 + 6 + 6 * 10 + 10 + 2 + 1  # the MLP's parameters, train_loss and its weight, n_k
    assert masked == [dim] * 6  # 3 clients x 2 rounds, each through its agent's Masker
    assert [h["survivors"] for h in result["history"][1:]] == [3, 3]
    # The masks cancel: the plain-torch FedAvg, within the quantization bound.
    reference = torch_reference(settings)
    # Two rounds of quantization error (a bound each), plus float32 rounding of the averages.
    largest = max(float(np.max(np.abs(v))) for v in reference.values())
    tolerance = 2 * result["history"][-1]["error_bound"] + 4 * np.finfo(np.float32).eps * largest
    for key, value in reference.items():
        assert np.max(np.abs(result["weights"][key] - value)) <= tolerance, key


def test_the_agents_masker_refuses_when_no_request_is_pending(flower_identity: None) -> None:
    from federated.client_app import client_agent

    settings = FedSettings(num_partitions=2)
    agent = client_agent(_context(settings, 0), settings)
    # No masking request came (no secure session on this node): nothing is masked or sent.
    with pytest.raises(Exception, match="no masking request is pending"):
        agent.get(Masker).mask(np.zeros(3, dtype=np.uint32))
