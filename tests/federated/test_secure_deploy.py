"""SecureFedAvg on the deployment engine (SuperLink + SuperNodes on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest

from federated.secure_deploy import deploy_secure


def _cwd_under(proc: psutil.Process, folder: Path) -> bool:
    try:
        return Path(proc.cwd()).is_relative_to(folder)
    except (psutil.Error, OSError):
        return False


@pytest.mark.slow
def test_deployment_round_equals_in_process_fedavg(tmp_path) -> None:
    from flwr.app import Array, ArrayRecord

    from federated.arrays import to_numpy
    from federated.client_app import local_update
    from federated.server_app import evaluate_global
    from federated.settings import FedSettings
    from federated.task import get_weights, load_model, set_weights

    overrides = {"num-server-rounds": 2, "num-partitions": 2, "fraction-evaluate": 0.0, "hidden": 8,
                 "secagg-seed": 1}
    try:
        result = deploy_secure(overrides, workdir=tmp_path, timeout=400)
    finally:
        # Every process the run started (SuperLink, SuperNodes, app processes) is gone.
        leftover = [p.pid for p in psutil.process_iter() if _cwd_under(p, tmp_path)]
    assert leftover == []
    history = result["history"][1:]  # round 0 (the initial model) first
    assert [(r["survivors"], r["dropped"]) for r in history] == [(2, 0), (2, 0)]
    # Round 2 runs on the session whose keys and shares rode on round 1's messages.
    assert [r["pipelined"] for r in history] == [False, True]

    # Reference: the same local updates averaged in the clear, in this process, round by round.
    settings = FedSettings.from_run_config({k: v for k, v in overrides.items() if not k.startswith("secagg-")})
    weights = to_numpy(get_weights(load_model(settings.dataset, settings.hidden, settings.seed)))
    for record in history:
        updates, counts = [], []
        for pid in range(2):
            model = load_model(settings.dataset, settings.hidden, settings.seed)
            set_weights(model, ArrayRecord({k: Array(v) for k, v in weights.items()}))
            n, _ = local_update(settings, pid, record["round"], model)
            updates.append(to_numpy(get_weights(model)))
            counts.append(n)
        weights = {k: (sum(c * u[k].astype(np.float64) for u, c in zip(updates, counts, strict=True))
                       / sum(counts)).astype(np.float32) for k in updates[0]}
        test_loss, test_acc = evaluate_global(settings, weights)
        assert record["test_acc"] == pytest.approx(test_acc, abs=1 / 360)
        assert record["test_loss"] == pytest.approx(test_loss, abs=1e-4)
