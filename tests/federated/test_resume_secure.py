"""Secure runs go through the one round loop: checkpointed every round, resumed like plain runs.

A secure sum is exact up to the fixed quantization (the masks cancel modulo 2**bits), so a run
stopped after round k and resumed ends with the very model an uninterrupted run reaches,
whichever sessions, keys and survivors' order each round used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated.checkpoint import load_server_checkpoint
from federated.settings import FedSettings
from federated.simulation import simulate

pytestmark = pytest.mark.slow

SECAGG = {"secagg-threshold": 0.6}  # t = 2 of 3 clients


def _base(folder: Path) -> FedSettings:
    return FedSettings(aggregation="secure", num_partitions=3, num_server_rounds=3, fraction_evaluate=0.0,
                       hidden=8, local_epochs=1, min_replies=2, checkpoint_dir=str(folder), resume=True,
                       round_timeout=300.0)  # generous: Ray's workers start slowly on a loaded machine


def test_secure_run_stopped_in_round_3_and_resumed_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    base = _base(tmp_path / "interrupted")
    # Round 3: two of three clients fail, fewer than t survive: the round stops the run.
    with pytest.raises(Exception, match="round 3|threshold|survivors|dropped"):
        simulate(base.replace(faults="3:0:raise,3:1:raise"), secagg=SECAGG)
    state = load_server_checkpoint(base.checkpoint_dir)
    assert state is not None and state["round"] == 2
    assert [h["round"] for h in state["history"]] == [0, 1, 2]
    assert [h["survivors"] for h in state["history"][1:]] == [3, 3]

    resumed = simulate(base, secagg=SECAGG)
    assert [h["round"] for h in resumed["history"]] == [0, 1, 2, 3]
    assert resumed["history"][:3] == state["history"]  # rounds 1-2 come from the checkpoint
    assert resumed["history"][3]["pipelined"] is False  # a resumed run opens a fresh session

    whole = simulate(_base(tmp_path / "whole"), secagg=SECAGG)
    assert [h["pipelined"] for h in whole["history"][1:]] == [False, True, True]
    assert list(whole["weights"]) == list(resumed["weights"])
    for key, value in whole["weights"].items():
        assert np.array_equal(resumed["weights"][key], value), key
    assert whole["history"][3]["test_acc"] == resumed["history"][3]["test_acc"]
