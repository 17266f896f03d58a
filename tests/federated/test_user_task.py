"""The federated experiment kinds train a user's task module named by import path.

The module (conftest.py's ``user_task`` fixture) is written in the test's tmp dir (put on
sys.path), the way a user writes Flower's quickstart ``task.py``: plain functions, no
seeding. Bad paths and incomplete modules
stop before a run directory exists, with one line naming the ``task`` key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import UserError
from experiments.runner import prepare, run

REPO = Path(__file__).resolve().parents[2]


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

    from federated.arrays import from_numpy, to_numpy
    from federated.strategy import fedavg
    from federated.task import (
        UserTask,
        derive_seed,
        get_weights,
        set_weights,
    )

    rd = run({"kind": "federated", "task": user_task, "num_clients": 2, "rounds": 2, "local_epochs": 1,
              "lr": 0.1, "round_timeout": 300, "seed": 3}, out=tmp_path / "run", quiet=True)
    rows = [m for m in rd.read_metrics() if m["partitioning"] == "task"]
    assert [m["round"] for m in rows] == [0, 1, 2]
    assert {p.name for p in rd.figures()} == {"accuracy_per_round.png"}

    # The same module, seeds and average in a plain loop in this process: the user's own
    # functions, torch's generator seeded as the framework promises (not the Agent path).
    import mypkg.task as mod

    torch.set_num_threads(1)
    task = UserTask(user_task, seed=3)
    weights = to_numpy(get_weights(task.model()))
    expected = [task.central_evaluate(task.model())]
    for server_round in (1, 2):
        updates, counts = [], []
        for pid in range(2):
            model = task.model()
            set_weights(model, from_numpy(weights))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(3, server_round, pid))
                loader, _ = mod.load_data(pid, 2)
                mod.train(model, loader, 1, 0.1, "cpu")
            counts.append(len(loader.dataset))
            updates.append(to_numpy(get_weights(model)))
        weights = fedavg(updates, counts)
        model = task.model()
        set_weights(model, from_numpy(weights))
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
