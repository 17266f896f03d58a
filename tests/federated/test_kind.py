"""The `federated` experiment kind: bad input exits 2 before anything starts; a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import UserError
from experiments.rundir import RunDir
from experiments.runner import prepare, run


@pytest.mark.parametrize(("override", "match"), [
    ("num_clients=100000", "'num_clients' = 100000 is invalid"),
    ("partitionings=[{partitioner: dirichlet, alpha: 0}]", "alpha"),
    ("dataset=mnist", "dataset"),
    ("partitionings=[{partitioner: pathological, classes_per_client: 11}]", "classes_per_client"),
    ("faults=1-2", "ROUND:PARTITION:MODE"),
])
def test_bad_config_is_rejected_before_running(override: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        prepare("fedavg_digits", overrides=[override])


def test_cli_exits_2_on_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "experiments", "run", "fedavg_digits", "--out", str(out),
                          "num_clients=100000"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "num_clients" in res.stderr and not out.exists()
    res = subprocess.run([sys.executable, "-m", "federated.deploy", "--partitioner", "dirichlet", "--alpha", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "alpha: Input should be greater than 0" in res.stderr


@pytest.mark.slow
def test_tiny_run_writes_rounds_figures_and_headline(tmp_path: Path) -> None:
    rd = run("fedavg_digits", out=tmp_path / "run", quiet=True, overrides=[
        "num_clients=2", "rounds=1", "partitionings=[{partitioner: dirichlet, alpha: 1.0}]",
        "round_timeout=300"])
    metrics = rd.read_metrics()
    fed = [m for m in metrics if m["partitioning"] == "dirichlet-1"]
    assert [m["round"] for m in fed] == [0, 1]
    # the centralized reference trains rounds * local_epochs epochs on the union
    assert [m["epoch"] for m in metrics if m["partitioning"] == "centralized"] == list(range(1, 6))
    assert fed[-1]["test_acc"] > fed[0]["test_acc"]
    assert {p.name for p in rd.figures()} == {"accuracy_per_round.png", "label_distribution.png"}
    summary = json.loads((rd.path / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["headline"]["dirichlet-1_final_acc"] == fed[-1]["test_acc"]
    assert RunDir(rd.path).checkpoint_path.exists()
