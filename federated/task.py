"""The federated task: a small MLP, scikit-learn's datasets, non-IID partitions, train and test.

Everything here is a plain function so the ClientApp, the ServerApp, the benchmarks and the
secure-aggregation apps share one definition of the model and the data::

    model = load_model("digits")
    loader = load_data("digits", partition_id=0, num_partitions=10, partitioner="dirichlet",
                       alpha=0.5, seed=0, shuffle_seed=7)
    loss = train(model, loader, epochs=1, lr=0.05)
    test_loss, test_acc = test(model, load_test_data("digits"))
    arrays = get_weights(model)            # an flwr ArrayRecord (federated.arrays: to/from numpy)
    set_weights(model, arrays)

The data never leaves the package: ``load_digits`` and ``load_breast_cancer`` ship inside
scikit-learn. Partitions come from flwr-datasets partitioners applied to an in-memory
``datasets.Dataset`` of the training split; the test split stays on the server.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# flwr-datasets imports huggingface_hub; nothing here may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATASETS = ("digits", "breast_cancer")
PARTITIONERS = ("iid", "dirichlet", "pathological")
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """One dataset split into a training part (partitioned) and a held-out test part."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def check_dataset(dataset: str) -> None:
    """Raises ValueError naming ``dataset`` and the allowed values when it is unknown."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


@lru_cache(maxsize=4)
def load_split(dataset: str, split_seed: int = 0) -> Split:
    """The stratified train/test split of ``dataset`` (80/20), features scaled.

    Args:
        dataset: ``digits`` (1797 8x8 images, 10 classes) or ``breast_cancer`` (569 samples,
            30 features, 2 classes).
        split_seed: Seed of the train/test shuffle. Default 0.

    Returns:
        The split, float32 features and int64 labels. Digits are scaled to [0, 1]; breast
        cancer features are standardized with the training part's mean and deviation.
    """
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    check_dataset(dataset)
    bunch = load_digits() if dataset == "digits" else load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=split_seed
    )
    if dataset == "digits":
        x_tr, x_te = x_tr / 16.0, x_te / 16.0
    else:
        mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Split(x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te,
                 int(y.max()) + 1)


def check_partition_args(
    dataset: str,
    num_partitions: int,
    partitioner: str,
    alpha: float = 0.5,
    classes_per_client: int = 2,
) -> None:
    """Validates partitioning arguments before any process starts.

    Raises:
        ValueError: naming the parameter and its allowed values or range.
    """
    check_dataset(dataset)
    if partitioner not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, got {partitioner!r}")
    split = load_split(dataset)
    n = len(split.y_train)
    if not 1 <= num_partitions <= n:
        raise ValueError(
            f"num_partitions must be in [1, {n}] (the {dataset} training split has {n} samples), "
            f"got {num_partitions}"
        )
    if partitioner == "dirichlet" and not alpha > 0:
        raise ValueError(f"alpha must be > 0 for the dirichlet partitioner, got {alpha}")
    if partitioner == "pathological" and not 1 <= classes_per_client <= split.num_classes:
        raise ValueError(
            f"classes_per_client must be in [1, {split.num_classes}] for {dataset}, got {classes_per_client}"
        )


@lru_cache(maxsize=16)
def partition_indices(
    dataset: str,
    num_partitions: int,
    partitioner: str = "iid",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
    min_partition_size: int = 2,
) -> tuple[np.ndarray, ...]:
    """Indices into the training split held by each partition, from flwr-datasets.

    Args:
        dataset: One of :data:`DATASETS`.
        num_partitions: Number of clients.
        partitioner: ``iid`` (IidPartitioner on a shuffled copy), ``dirichlet``
            (DirichletPartitioner over the label with ``alpha``) or ``pathological``
            (PathologicalPartitioner, ``classes_per_client`` labels per client).
        alpha: Dirichlet concentration; smaller is more skewed. Default 0.5.
        classes_per_client: Labels per client for ``pathological``. Default 2.
        seed: Seed of the shuffle and of the partitioner's generator. Default 0.
        min_partition_size: Smallest partition the Dirichlet partitioner accepts
            (it resamples until met). Default 2.

    Returns:
        One sorted int64 index array per partition; together they cover every training
        sample exactly once (the pathological partitioner drops none as long as every
        label is assigned to some client).
    """
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    check_partition_args(dataset, num_partitions, partitioner, alpha, classes_per_client)
    split = load_split(dataset)
    # The IID partitioner cuts contiguous shards, so the rows are shuffled first.
    order = np.random.default_rng(seed).permutation(len(split.y_train))
    table = datasets.Dataset.from_dict({"idx": order.tolist(), "label": split.y_train[order].tolist()})
    if partitioner == "iid":
        part: Any = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        part = DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=float(alpha),
                                    min_partition_size=min_partition_size, self_balancing=False, seed=seed)
    else:
        part = PathologicalPartitioner(num_partitions=num_partitions, partition_by="label",
                                       num_classes_per_partition=classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    part.dataset = table
    out = []
    for pid in range(num_partitions):
        out.append(np.sort(np.asarray(part.load_partition(pid)["idx"], dtype=np.int64)))
    return tuple(out)


def label_counts(dataset: str, indices: tuple[np.ndarray, ...]) -> np.ndarray:
    """A (num_partitions, num_classes) matrix of label counts per partition."""
    split = load_split(dataset)
    return np.stack([np.bincount(split.y_train[ix], minlength=split.num_classes) for ix in indices])


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from ``parts`` (run seed, round, partition id, ...).

    Python's ``hash`` is salted per process; clients run in other processes, so the seed is
    derived from a digest instead.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def load_data(
    dataset: str,
    partition_id: int,
    num_partitions: int,
    partitioner: str = "iid",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    *,
    batch_size: int = 32,
    seed: int = 0,
    shuffle_seed: int = 0,
) -> DataLoader:
    """A shuffling DataLoader over one client's partition.

    Args:
        dataset, num_partitions, partitioner, alpha, classes_per_client, seed:
            As in :func:`partition_indices` (``seed`` fixes the partition).
        partition_id: Which client, in ``[0, num_partitions)``.
        batch_size: Mini-batch size. Default 32.
        shuffle_seed: Seed of this loader's batch order (vary it per round). Default 0.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    ix = partition_indices(dataset, num_partitions, partitioner, float(alpha), classes_per_client, seed)[partition_id]
    split = load_split(dataset)
    data = TensorDataset(torch.from_numpy(split.x_train[ix]), torch.from_numpy(split.y_train[ix]))
    gen = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)


def load_test_data(dataset: str, batch_size: int = 512) -> DataLoader:
    """The held-out test split (the server's centralized evaluation set)."""
    split = load_split(dataset)
    data = TensorDataset(torch.from_numpy(split.x_test), torch.from_numpy(split.y_test))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def load_union_data(dataset: str, *, batch_size: int = 32, shuffle_seed: int = 0) -> DataLoader:
    """The whole training split in one loader: the centralized reference's data."""
    split = load_split(dataset)
    data = TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train))
    return DataLoader(data, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(shuffle_seed))


class Net(nn.Module):
    """A one-hidden-layer MLP: features -> hidden (ReLU) -> class logits."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_model(dataset: str = "digits", hidden: int = 64, seed: int = 0) -> Net:
    """A freshly initialized :class:`Net` sized for ``dataset``, its weights fixed by ``seed``."""
    split = load_split(dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net(split.num_features, split.num_classes, hidden)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, device: str = "cpu") -> float:
    """Trains ``model`` in place with SGD (momentum 0.9) and returns the mean training loss.

    Args:
        model: The model to train.
        loader: Batches of (features, labels).
        epochs: Passes over ``loader``.
        lr: Learning rate.
        device: ``cpu`` or a torch device string.

    Returns:
        Mean cross-entropy over every batch of every epoch.
    """
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.item())
            batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def test(model: nn.Module, loader: DataLoader, device: str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader``."""
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += float(loss_fn(logits, y).item())
        correct += int((logits.argmax(1) == y).sum().item())
        n += len(y)
    return loss / max(n, 1), correct / max(n, 1)


# The task as an agent's capabilities ------------------------------------------------------
#
# A Flower client is an ``envs.Agent`` holding a DataSource (its partition) and a Learner (its
# local training); see :func:`federated.client_app.client_agent`. The built-in task's are
# these two; a user's task module gets the same two kinds from :class:`UserTask`.


class PartitionData:
    """DataSource: one client's partition of the built-in dataset (it never leaves the client).

    Args:
        dataset, num_partitions, partitioner, alpha, classes_per_client: As in
            :func:`partition_indices`.
        partition_id: Which client, in ``[0, num_partitions)``.
        batch_size: Mini-batch size.
        seed: Seed of the partition (the split among clients, not the batch order).
    """

    def __init__(self, dataset: str, partition_id: int, num_partitions: int, partitioner: str = "iid",
                 alpha: float = 0.5, classes_per_client: int = 2, *, batch_size: int = 32, seed: int = 0) -> None:
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
        self.dataset, self.partition_id, self.num_partitions = dataset, partition_id, num_partitions
        self.partitioner, self.alpha, self.classes_per_client = partitioner, float(alpha), classes_per_client
        self.batch_size, self.seed = batch_size, seed

    def indices(self) -> np.ndarray:
        """This partition's rows of the training split."""
        return partition_indices(self.dataset, self.num_partitions, self.partitioner, self.alpha,
                                 self.classes_per_client, self.seed)[self.partition_id]

    def num_examples(self) -> int:
        return int(len(self.indices()))

    def batches(self, seed: int) -> DataLoader:
        """A loader whose first pass is in the order fixed by ``seed``; passing over it again
        continues the same generator (epoch 2, 3, ... of one local training)."""
        return load_data(self.dataset, self.partition_id, self.num_partitions, self.partitioner, self.alpha,
                         self.classes_per_client, batch_size=self.batch_size, seed=self.seed, shuffle_seed=seed)


class SGDLearner:
    """Learner: ``epochs`` passes of SGD (momentum 0.9) over the data source, as :func:`train`.

    Args:
        epochs: Local passes over the data per call.
        lr: Learning rate.
    """

    def __init__(self, epochs: int, lr: float) -> None:
        self.epochs, self.lr = epochs, lr

    def fit(self, model: nn.Module, data: Any, seed: int) -> dict[str, float]:
        """Trains ``model`` in place on ``data``'s batches ordered by ``seed``; returns ``train_loss``."""
        return {"train_loss": train(model, data.batches(seed), self.epochs, self.lr)}


def get_weights(model: nn.Module) -> Any:
    """The model's state dict as an ``flwr.app.ArrayRecord`` (copied to CPU)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def set_weights(model: nn.Module, arrays: Any) -> None:
    """Loads an ``ArrayRecord`` (as made by :func:`get_weights`) into ``model``."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


# A user's task module ----------------------------------------------------------------------
#
# The run config's ``task`` key names a module by import path (``mypkg.task``) that holds the
# same four plain functions as Flower's quickstart ``task.py``. The framework owns the seeds:
# it seeds torch's global generator before building the model and before each local
# training, so a module written without any seeding still gives the same run for the same
# seed, and a resumed run the same model as an uninterrupted one.

TASK_FUNCTIONS = {
    "load_model": "load_model() -> torch.nn.Module (the initial global model)",
    "load_data": "load_data(partition_id, num_partitions) -> (trainloader, testloader)",
    "train": "train(model, trainloader, epochs, lr, device) -> mean training loss",
    "test": "test(model, testloader, device) -> (loss, accuracy)",
}
CENTRALIZED = "load_centralized_dataset"  # optional: () -> the server's held-out test loader


def load_task_module(path: str, key: str = "task") -> Any:
    """Imports the task module ``path`` and checks that it has the task functions.

    Args:
        path: A dotted import path (``examples.secure_quickstart.task``, ``mypkg.task``)
            importable from ``sys.path``.
        key: The config key that named it, for the error message.

    Returns:
        The module.

    Raises:
        ValueError: naming ``key``, the path and what is missing or wrong.
    """
    import importlib

    if not path or not all(part.isidentifier() for part in path.split(".")):
        raise ValueError(f"{key} must be a dotted module path such as 'mypkg.task', got {path!r}")
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ValueError(f"{key}: cannot import {path!r} ({exc}); it must be importable from sys.path "
                         f"(install its package or run from the folder above it)") from None
    missing = [f"{name}: {sig}" for name, sig in TASK_FUNCTIONS.items() if not callable(getattr(module, name, None))]
    if missing:
        raise ValueError(f"{key}: module {path!r} lacks the task function(s) " + "; ".join(missing))
    return module


def task_module_root(path: str) -> str:
    """The ``sys.path`` folder that ``path`` is imported from (to hand to other processes)."""
    import importlib.util

    spec = importlib.util.find_spec(path)
    if spec is None or spec.origin is None:
        raise ValueError(f"task: cannot find module {path!r}")
    origin = Path(spec.origin).resolve()
    levels = path.count(".") + (1 if origin.name == "__init__.py" else 0)
    return str(origin.parents[levels])


class UserTaskData:
    """DataSource: one client's training loader from a user's task module (``load_data``).

    The module's loader may shuffle with torch's global generator; the learner that uses it
    (:class:`UserTaskLearner`) seeds that generator before asking for the batches.
    """

    def __init__(self, module: Any, partition_id: int, num_partitions: int) -> None:
        self.module, self.partition_id, self.num_partitions = module, partition_id, num_partitions
        self._loader: Any = None

    def batches(self, seed: int) -> Any:
        """The module's training loader for this partition (``seed`` is already in torch's generator)."""
        self._loader = self.module.load_data(self.partition_id, self.num_partitions)[0]
        return self._loader

    def num_examples(self) -> int:
        if self._loader is None:
            with torch.random.fork_rng(devices=[]):
                self._loader = self.module.load_data(self.partition_id, self.num_partitions)[0]
        return len(self._loader.dataset)


class UserTaskLearner:
    """Learner: the user's ``train(model, trainloader, epochs, lr, device)`` under the framework's seed."""

    def __init__(self, module: Any, epochs: int, lr: float) -> None:
        self.module, self.epochs, self.lr = module, epochs, lr

    def fit(self, model: nn.Module, data: Any, seed: int) -> dict[str, float]:
        """Seeds torch's global generator with ``seed``, then trains ``model`` in place; returns ``train_loss``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss = self.module.train(model, data.batches(seed), self.epochs, self.lr, "cpu")
        return {"train_loss": float(loss)}


class UserTask:
    """A user's task module driven with the framework's seeds.

    Args:
        path: The module's import path (see :func:`load_task_module`).
        seed: The run's seed: fixes the initial model and, with the round and partition,
            every local training's randomness (torch's global generator).
    """

    def __init__(self, path: str, seed: int = 0) -> None:
        self.path = path
        self.module = load_task_module(path)
        self.seed = seed

    def model(self) -> nn.Module:
        """The initial global model, the same for the same seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.module.load_model()

    def data(self, partition_id: int, num_partitions: int) -> UserTaskData:
        """The DataSource of client ``partition_id``."""
        return UserTaskData(self.module, partition_id, num_partitions)

    def learner(self, epochs: int, lr: float) -> UserTaskLearner:
        """The module's local training as a Learner."""
        return UserTaskLearner(self.module, epochs, lr)

    def evaluate(self, model: nn.Module, partition_id: int, num_partitions: int) -> tuple[int, float, float]:
        """One client's evaluation on its own test loader: (examples, loss, accuracy)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "evaluate", partition_id))
            _, testloader = self.module.load_data(partition_id, num_partitions)
            loss, acc = self.module.test(model, testloader, "cpu")
        return len(testloader.dataset), float(loss), float(acc)

    def central_evaluate(self, model: nn.Module) -> tuple[float, float] | None:
        """(loss, accuracy) on the module's centralized test set; None when it has none."""
        load = getattr(self.module, CENTRALIZED, None)
        if load is None:
            return None
        loss, acc = self.module.test(model, load(), "cpu")
        return float(loss), float(acc)
