"""secure_quickstart: the model, the data, and train/test, as plain functions.

The shape of Flower's quickstart ``task.py``, offline: scikit-learn's digits (1797 8x8
images of the digits 0-9) ship inside scikit-learn, so nothing is downloaded. The four
functions ``load_model``, ``load_data``, ``train`` and ``test`` (and
``load_centralized_dataset`` for the server's held-out test set) are also what Agora's
experiment kinds take from a task module (``task: examples.secure_quickstart.task``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH_SIZE = 32
SPLIT_SEED = 0  # fixes the held-out test set and the partitions


class Net(nn.Module):
    """A small MLP: 64 pixels -> 32 hidden units (ReLU) -> 10 digit logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_model() -> nn.Module:
    """A freshly initialized model (the initial global model on the server)."""
    return Net()


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All digits, scaled to [0, 1], in one fixed shuffled order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data.target))
    return (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int64)


def _loader(x: np.ndarray, y: np.ndarray, shuffle: bool) -> DataLoader:
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=BATCH_SIZE,
                      shuffle=shuffle)


def load_data(partition_id: int, num_partitions: int) -> tuple[DataLoader, DataLoader]:
    """This client's share of the training images (IID), split 80/20 into train and test.

    The last 20% of the shuffled digits are the server's held-out test set
    (:func:`load_centralized_dataset`); the rest is cut into ``num_partitions`` equal shares.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    x, y = _digits()
    pool = int(len(y) * 0.8)
    share = np.array_split(np.arange(pool), num_partitions)[partition_id]
    cut = int(len(share) * 0.8)
    train_ix, test_ix = share[:cut], share[cut:]
    return _loader(x[train_ix], y[train_ix], shuffle=True), _loader(x[test_ix], y[test_ix], shuffle=False)


def load_centralized_dataset() -> DataLoader:
    """The held-out test set the server evaluates the global model on."""
    x, y = _digits()
    pool = int(len(y) * 0.8)
    return _loader(x[pool:], y[pool:], shuffle=False)


def train(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float, device: str) -> float:
    """Trains ``net`` in place with SGD and returns the mean training loss."""
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def test(net: nn.Module, testloader: DataLoader, device: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``net`` on ``testloader``."""
    net.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, count = 0.0, 0, 0
    for x, y in testloader:
        logits = net(x.to(device))
        loss += criterion(logits, y.to(device)).item()
        correct += (logits.argmax(1) == y.to(device)).sum().item()
        count += len(y)
    return loss / max(count, 1), correct / max(count, 1)
