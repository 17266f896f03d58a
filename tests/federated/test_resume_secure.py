"""Secure runs go through the one round loop: checkpointed every round, resumed like plain runs.

A secure sum is exact up to the fixed quantization (the masks cancel modulo 2**bits), so a run
stopped after round k and resumed ends with the very model an uninterrupted run reaches,
whichever sessions, keys and survivors' order each round used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated.checkpoint import load_server_checkpoint, save_server_checkpoint
from federated.secure_aggregation import SecAggParams
from federated.settings import FedSettings
from federated.simulation import simulate


def _base(folder: Path) -> FedSettings:
    return FedSettings(aggregation="secure", num_partitions=3, num_server_rounds=3, fraction_evaluate=0.0,
                       hidden=8, local_epochs=1, min_replies=2, checkpoint_dir=str(folder), resume=True,
                       round_timeout=300.0,  # generous: Ray's workers start slowly on a loaded machine
                       secagg=SecAggParams(threshold=0.6))  # t = 2 of 3 clients


@pytest.mark.slow
@pytest.mark.timeout(900)  # each engine start takes up to minutes on a loaded 2-core machine
def test_secure_run_stopped_in_round_3_and_resumed_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    base = _base(tmp_path / "interrupted")
    # Round 3: two of three clients fail, fewer than t survive: the round stops the run.
    with pytest.raises(Exception, match="round 3|threshold|survivors|dropped"):
        simulate(base.replace(faults="3:0:raise,3:1:raise"))
    state = load_server_checkpoint(base.checkpoint_dir)
    assert state is not None and state["round"] == 2
    assert [h["round"] for h in state["history"]] == [0, 1, 2]
    assert [h["survivors"] for h in state["history"][1:]] == [3, 3]

    resumed = simulate(base)
    assert [h["round"] for h in resumed["history"]] == [0, 1, 2, 3]
    assert resumed["history"][:3] == state["history"]  # rounds 1-2 come from the checkpoint
    assert resumed["history"][3]["pipelined"] is False  # a resumed run opens a fresh session

    whole = simulate(_base(tmp_path / "whole"))
    assert [h["pipelined"] for h in whole["history"][1:]] == [False, True, True]
    assert list(whole["weights"]) == list(resumed["weights"])
    for key, value in whole["weights"].items():
        assert np.array_equal(resumed["weights"][key], value), key
    assert whole["history"][3]["test_acc"] == resumed["history"][3]["test_acc"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # each engine start takes up to minutes on a loaded 2-core machine
def test_a_secure_deployment_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    # Round 1 on the simulation engine; round 2 on the deployment engine (SuperLink and
    # SuperNodes as processes), resuming from round 1's checkpoint: the checkpoint is the
    # loop's, not an engine's.
    import psutil
    from flwr.app import Array, ArrayRecord

    from federated.arrays import to_numpy
    from federated.client_app import local_update
    from federated.secure_deploy import deploy_secure
    from federated.task import get_weights, load_model, set_weights

    overrides = {"num-partitions": 2, "fraction-evaluate": 0.0, "hidden": 8, "local-epochs": 1,
                 "checkpoint-dir": str(tmp_path / "checkpoint"), "resume": True, "round-timeout": 300.0}
    first = simulate(FedSettings.from_run_config({**overrides, "num-server-rounds": 1, "aggregation": "secure"}))
    try:
        resumed = deploy_secure({**overrides, "num-server-rounds": 2}, workdir=tmp_path / "run", timeout=400)
    finally:
        leftover = [p.pid for p in psutil.process_iter() if _cwd_under(p, tmp_path)]
    assert leftover == []
    assert [r["round"] for r in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][:2] == first["history"]  # timings included: read back, not rerun
    last = resumed["history"][2]
    assert (last["survivors"], last["dropped"], last["pipelined"]) == (2, 0, False)

    # Round 2 from round 1's model: the secure average equals the plain one within the bound.
    settings = FedSettings(num_partitions=2, hidden=8, local_epochs=1)
    updates, counts = [], []
    for pid in range(2):
        model = load_model(settings.dataset, settings.hidden, settings.seed)
        set_weights(model, ArrayRecord({k: Array(v) for k, v in first["weights"].items()}))
        counts.append(local_update(settings, pid, 2, model)[0])
        updates.append(to_numpy(get_weights(model)))
    largest = max(float(np.max(np.abs(w))) for w in resumed["weights"].values())
    for key, value in resumed["weights"].items():
        plain = sum(c * u[key].astype(np.float64) for u, c in zip(updates, counts, strict=True)) / sum(counts)
        assert np.max(np.abs(value - plain)) <= last["error_bound"] + 4 * np.finfo(np.float32).eps * largest, key


def _cwd_under(proc, folder: Path) -> bool:
    try:
        return Path(proc.cwd()).is_relative_to(folder)
    except Exception:
        return False


def test_resume_restores_the_wrapped_strategys_own_state(tmp_path: Path, flower_identity: None,
                                                         local_grid: type) -> None:
    # SecureAggregation(FedAdam): FedAdam's moments are server state; a resumed run must take
    # the same optimizer steps as an uninterrupted one. In-process nodes, the real round loop.
    from flwr.serverapp.strategy import FedAdam

    from federated import SecureAggregation
    from federated.server_app import run_rounds
    from federated.strategy import TooFewReplies
    from secure_agg import SecAggError

    base = FedSettings(aggregation="secure", num_partitions=3, num_server_rounds=3, fraction_evaluate=0.0,
                       hidden=4, local_epochs=1, min_replies=2, resume=True, round_timeout=120.0)

    def run(settings: FedSettings) -> dict:
        adam = FedAdam(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3, eta=0.01)
        strategy = SecureAggregation(adam, SecAggParams(seed=5), timeout=120.0, num_rounds=settings.num_server_rounds)
        return run_rounds(local_grid(3, settings.to_run_config()), settings, strategy=strategy)

    whole = run(base.replace(checkpoint_dir=str(tmp_path / "whole")))
    stopped = base.replace(checkpoint_dir=str(tmp_path / "stopped"))
    with pytest.raises((TooFewReplies, SecAggError)):
        run(stopped.replace(faults="3:0:raise,3:1:raise"))
    state = load_server_checkpoint(stopped.checkpoint_dir)
    assert state["round"] == 2 and sorted({k.split(":")[0] for k in state["state"]}) == ["m_t", "v_t"]
    resumed = run(stopped)
    for key, value in whole["weights"].items():
        assert np.array_equal(resumed["weights"][key], value), key

    # Without FedAdam's moments the resumed run would take other steps: the state is what matters.
    save_server_checkpoint(stopped.checkpoint_dir, 2, state["weights"], state["history"])
    forgetful = run(stopped)
    assert any(not np.array_equal(forgetful["weights"][k], v) for k, v in whole["weights"].items())
