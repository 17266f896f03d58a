"""Deployment engine: a SuperLink and 3 SuperNodes on 127.0.0.1 run the same apps; a client
process that dies is counted as a failure; every process is gone afterwards, also on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest

from federated.deploy import DeploymentError, deploy
from federated.reference import plain_fedavg
from federated.settings import FedSettings

pytestmark = pytest.mark.slow


def _processes_in(folder: Path) -> list[str]:
    """Processes whose working directory is under ``folder`` (every process deploy starts)."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if Path(proc.cwd()).is_relative_to(folder):
                out.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.Error, OSError):
            continue
    return out


def test_three_supernodes_one_dies_the_round_completes(tmp_path: Path, torch_reference) -> None:
    # Client 2's ClientApp process exits in round 1; 2 of 3 replies are enough.
    settings = FedSettings(num_partitions=3, num_server_rounds=1, partitioner="dirichlet", alpha=1.0,
                           fraction_evaluate=0.0, min_replies=2, faults="1:2:exit", round_timeout=300.0)
    try:
        result = deploy(settings, workdir=tmp_path, timeout=500)
    finally:
        leftover = _processes_in(tmp_path)
    assert leftover == []
    last = result["history"][-1]
    assert (last["round"], last["replies"], last["failures"]) == (1, 2, 1)
    assert last["test_acc"] > result["history"][0]["test_acc"]
    # The same clients in a plain loop (client 2 dropped): the same model, bit for bit.
    reference = plain_fedavg(settings, evaluate=False)
    for key, value in reference["weights"].items():
        assert np.array_equal(result["weights"][key], value), key
    # The Agent clients on the deployment engine give plain torch's model, bit for bit.
    for key, value in torch_reference(settings, dropped={1: {2}}).items():
        assert np.array_equal(result["weights"][key], value), key


def test_a_failed_deployment_stops_every_process(tmp_path: Path) -> None:
    settings = FedSettings(num_partitions=2, num_server_rounds=50, partitioner="iid")
    with pytest.raises(DeploymentError, match="did not finish within"):
        deploy(settings, workdir=tmp_path, timeout=5)
    assert _processes_in(tmp_path) == []
