"""The federated experiment kinds train a user's task module named by import path.

The module is written here, in the test's tmp dir (put on sys.path), the way a user writes
Flower's quickstart ``task.py``: plain functions, no seeding. Bad paths and incomplete modules
stop before a run directory exists, with one line naming the ``task`` key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import UserError
from experiments.runner import prepare, run

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

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(("config", "match"), [
    ({"kind": "federated", "task": "nope.missing"}, r"config key 'task' = 'nope.missing' is invalid: .*cannot import"),
    ({"kind": "federated", "task": "not a/path"}, r"config key 'task' .*dotted module path"),
    ({"kind": "federated", "task": "mypkg.half"}, r"config key 'task' .*lacks the task function\(s\) train: .*; test: "),
    ({"kind": "federated", "task": "mypkg.nocentral"}, r"config key 'task' .*load_centralized_dataset"),
    ({"kind": "federated", "task": "mypkg.task", "hidden": 8}, r"hidden apply to the built-in task only"),
    ({"kind": "secagg_fedavg", "task": "mypkg.missing"}, r"config key 'task' = 'mypkg.missing' is invalid"),
    ({"kind": "secagg_fedavg", "task": "mypkg.task", "alpha": 0.3}, r"alpha apply to the built-in task only"),
])
def test_bad_task_module_is_rejected_before_running(user_task: str, config: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        prepare(config)


def test_cli_exits_2_with_one_line_naming_the_task_key(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "experiments", "run", "fedavg_digits", "--out", str(out),
                          "task=nope.missing"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'task'" in lines[0] and "nope.missing" in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_federated_kind_trains_the_user_task_exactly_like_a_plain_fedavg_loop(user_task: str, tmp_path: Path) -> None:
    import torch

    from federated.strategy import fedavg
    from federated.task import (
        UserTask,
        get_weights,
        numpy_to_weights,
        set_weights,
        weights_to_numpy,
    )

    rd = run({"kind": "federated", "task": user_task, "num_clients": 2, "rounds": 2, "local_epochs": 1,
              "lr": 0.1, "round_timeout": 300, "seed": 3}, out=tmp_path / "run", quiet=True)
    rows = [m for m in rd.read_metrics() if m["partitioning"] == "task"]
    assert [m["round"] for m in rows] == [0, 1, 2]
    assert {p.name for p in rd.figures()} == {"accuracy_per_round.png"}

    # The same module, seeds and average in a plain loop in this process.
    torch.set_num_threads(1)
    task = UserTask(user_task, seed=3)
    weights = weights_to_numpy(get_weights(task.model()))
    expected = [task.central_evaluate(task.model())]
    for server_round in (1, 2):
        updates, counts = [], []
        for pid in range(2):
            model = task.model()
            set_weights(model, numpy_to_weights(weights))
            counts.append(task.fit(model, pid, 2, server_round, epochs=1, lr=0.1)[0])
            updates.append(weights_to_numpy(get_weights(model)))
        weights = fedavg(updates, counts)
        model = task.model()
        set_weights(model, numpy_to_weights(weights))
        expected.append(task.central_evaluate(model))
    assert [(m["test_loss"], m["test_acc"]) for m in rows] == expected
    assert expected[-1][1] > expected[0][1]  # it learned something


@pytest.mark.slow
def test_secagg_kind_trains_the_quickstart_task_securely_and_plainly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # examples.secure_quickstart.task, as from the repo root
    rd = run({"kind": "secagg_fedavg", "task": "examples.secure_quickstart.task", "num_clients": 2, "rounds": 1,
              "round_timeout": 300}, out=tmp_path / "run", quiet=True)
    rows = rd.read_metrics()
    assert [m["round"] for m in rows] == [0, 1]
    assert rows[1]["survivors"] == 2
    # Secure and plain averages differ only by the quantization error: the same test accuracy.
    assert rows[1]["acc_diff"] <= 1 / 359 and rows[1]["secure_test_acc"] > rows[0]["secure_test_acc"]


def test_the_quickstart_experiment_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    spec, cfg, _ = prepare(REPO / "examples" / "secure_quickstart" / "experiment.yaml")
    assert (spec.name, cfg.task, cfg.aggregation) == ("federated", "examples.secure_quickstart.task", "secure")
    assert cfg.settings_for(None, "").task == "examples.secure_quickstart.task"
