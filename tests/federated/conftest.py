"""Fixtures shared by the federated tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TASK = '''
"""A user's task: logistic regression on a fixed synthetic two-class problem."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(240, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) > 0).astype(np.int64)
    return x, y


def _loader(ix, shuffle):
    x, y = _data()
    return DataLoader(TensorDataset(torch.from_numpy(x[ix]), torch.from_numpy(y[ix])), batch_size=16,
                      shuffle=shuffle)


def load_model():
    return nn.Linear(5, 2)


def load_data(partition_id, num_partitions):
    share = np.array_split(np.arange(200), num_partitions)[partition_id]
    cut = int(len(share) * 0.75)
    return _loader(share[:cut], True), _loader(share[cut:], False)


def load_centralized_dataset():
    return _loader(np.arange(200, 240), False)


def train(model, loader, epochs, lr, device):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    total, batches = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
    return total / batches


@torch.no_grad()
def test(model, loader, device):
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return loss / n, correct / n
'''


@pytest.fixture
def user_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``mypkg.task`` (complete), ``mypkg.nocentral`` (no centralized test set) and
    ``mypkg.half`` (no train/test) importable from the tmp dir."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TASK)
    (pkg / "nocentral.py").write_text(TASK.replace("def load_centralized_dataset", "def _unused"))
    (pkg / "half.py").write_text("def load_model():\n    return None\n\n\ndef load_data(p, n):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mypkg.task"
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


class LocalGrid:
    """A Grid whose nodes run the project's ClientApp in this process, one message at a time."""

    def __init__(self, num_nodes: int, overrides: dict) -> None:
        from flwr.app import RecordDict

        from federated.client_app import make_client_app

        self.app = make_client_app(overrides)
        self.nodes = [100 + 11 * i for i in range(num_nodes)]
        self.states = {node: RecordDict() for node in self.nodes}
        self.ready: dict[str, object] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> list[str]:
        import uuid

        from flwr.app import Context, Error, Message

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = msg.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, state=self.states[node], run_config={},
                              node_config={"partition-id": self.nodes.index(node), "num-partitions": len(self.nodes)})
            try:
                reply = self.app(msg, context)
            except Exception as exc:  # what the engines send back for a ClientApp that raised
                reply = Message(Error(code=1, reason=str(exc)), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.ready[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list:
        return [self.ready.pop(m) for m in list(message_ids) if m in self.ready]


@pytest.fixture
def local_grid() -> type:
    """:class:`LocalGrid`: a Grid whose nodes run the project's ClientApp in this process."""
    return LocalGrid


@pytest.fixture
def flower_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run/task/node ids Flower's engines set in a ClientApp's process, so that a test can
    build Messages and call a ClientApp in this process."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def torch_client_update(settings, weights: dict, partition_id: int, server_round: int) -> tuple[dict, int]:
    """One client's round of the built-in task in plain torch: the reference a Flower client is checked against.

    The partition's rows (flwr-datasets' partitioner over scikit-learn's data), a seeded
    DataLoader, SGD with momentum 0.9 and cross-entropy, written out here rather than taken
    from the code under test.
    """
    import hashlib

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from federated.task import load_split, partition_indices

    class MLP(nn.Module):
        def __init__(self, features: int, hidden: int, classes: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(features, hidden), nn.Linear(hidden, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    torch.set_num_threads(1)
    split = load_split(settings.dataset)
    rows = partition_indices(settings.dataset, settings.num_partitions, settings.partitioner, settings.alpha,
                             settings.classes_per_client, settings.seed)[partition_id]
    model = MLP(split.num_features, settings.hidden, split.num_classes)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    digest = hashlib.sha256(f"{settings.seed}/{server_round}/{partition_id}".encode()).digest()
    order = torch.Generator().manual_seed(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)
    data = TensorDataset(torch.from_numpy(split.x_train[rows]), torch.from_numpy(split.y_train[rows]))
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=order)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    for _ in range(settings.local_epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, len(rows)


def torch_fedavg(settings, dropped: dict[int, set[int]] | None = None) -> dict:
    """FedAvg of :func:`torch_client_update` clients (partition order), ``dropped[round]`` left out."""
    from federated.server_app import initial_weights
    from federated.strategy import fedavg

    weights = initial_weights(settings)
    for server_round in range(1, settings.num_server_rounds + 1):
        results = [torch_client_update(settings, weights, pid, server_round) for pid in range(settings.num_partitions)
                   if pid not in (dropped or {}).get(server_round, set())]
        weights = fedavg([w for w, _ in results], [n for _, n in results])
    return weights


@pytest.fixture
def torch_client() -> object:
    """:func:`torch_client_update`, the plain-torch reference of one client's round."""
    return torch_client_update


@pytest.fixture
def torch_reference() -> object:
    """:func:`torch_fedavg`, the plain-torch reference of a whole FedAvg run (built-in task)."""
    return torch_fedavg
