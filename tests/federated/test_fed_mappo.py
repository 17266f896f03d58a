"""Federated MAPPO on Flower's simulation engine: plain vs secure, what the server sees, resume.

One simulation (one Ray start) serves every check: its ServerApp runs the round loop several
times on the same two sites (plain, secure, secure interrupted after round 1 and resumed).
Secure aggregation runs on 64-bit words with weights of exactly 1, so its average is Flower
FedAvg's float32 mean bit for bit and the secure run is the plain run, round for round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from federated.checkpoint import load_server_checkpoint
from federated.fed_mappo import (
    ACTOR,
    FedMAPPOSettings,
    RecordingGrid,
    initial_weights,
    make_client_app,
    make_strategy,
    run_fed_rounds,
    train_site,
)
from federated.secure_aggregation import SecAggParams
from federated.simulation import run_apps

TRAIN = json.dumps({"num_envs": 4, "num_minibatches": 2, "update_epochs": 1, "hidden": 16})


def _settings(tmp: Path, **changes) -> FedMAPPOSettings:
    # 100 steps per site and round = max_weight: each site's weight is exactly 1.
    fields = dict(num_server_rounds=3, num_sites=2, local_steps=100, train=TRAIN, eval_episodes=2,
                  site_dir=str(tmp / "sites"), secagg=SecAggParams(seed=3, max_weight=100, bits=64))
    return FedMAPPOSettings.create(**{**fields, **changes})


def _observation_bytes(settings: FedMAPPOSettings, site: int) -> bytes:
    # The first observations of the site's own environments (same seed as its trainer's).
    from federated.fed_mappo import _site_seed
    from marl.mappo import MAPPO

    trainer = MAPPO(settings.site_config(site), _site_seed(settings, site))
    return trainer.obs.numpy().astype(np.float32).tobytes()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fed_mappo")
    base = _settings(tmp)
    out: dict[str, object] = {}

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        def loop(name: str, rounds: int, aggregation: str, ckpt: str, keep: bool = False) -> None:
            settings = base.model_copy(update={"num_server_rounds": rounds, "aggregation": aggregation,
                                               "checkpoint_dir": str(tmp / ckpt), "resume": True})
            recording = RecordingGrid(grid, keep=keep)
            out[name] = run_fed_rounds(recording, settings, strategy=make_strategy(settings))  # type: ignore[arg-type]
            out[name + "/received"] = recording.received

        try:
            loop("plain1", 1, "plain", "plain")
            loop("plain3", 3, "plain", "plain", keep=True)  # resumed after round 1
            loop("secure1", 1, "secure", "secure-resumed")
            loop("secure3-resumed", 3, "secure", "secure-resumed")
            loop("secure3", 3, "secure", "secure", keep=True)  # uninterrupted
        except BaseException as exc:
            out["error"] = exc
            raise
        out["done"] = True

    sink: list[object] = [None]  # run_apps returns sink[0]; this ServerApp reports through `out`
    run_apps(app, make_client_app(base.to_run_config()), 2, sink)
    assert "error" not in out, out.get("error")
    out["settings"] = base
    return out


def test_secure_curve_equals_plain_curve_bit_for_bit(runs):
    plain, secure = runs["plain1"], runs["secure1"]
    bound = secure["history"][1]["error_bound"]
    assert 0 < bound < 1e-14  # the stated bound; here it is never used
    for name, value in plain["weights"].items():
        np.testing.assert_array_equal(secure["weights"][name], value, err_msg=name)
    # Three rounds at equal seeds: the same global actor every round, so the same curve.
    for name, value in runs["plain3"]["weights"].items():
        np.testing.assert_array_equal(runs["secure3"]["weights"][name], value, err_msg=name)
    curve = [(r["round"], r["env_steps"], r["return"], r["site_returns"]) for r in runs["plain3"]["history"]]
    assert len(curve) == 4
    assert [(r["round"], r["env_steps"], r["return"], r["site_returns"]) for r in runs["secure3"]["history"]] == curve


def test_server_average_is_the_step_weighted_mean_of_the_sites(runs, tmp_path):
    # Reference: the two sites' round-1 updates computed here, outside Flower, averaged by hand
    # (equal steps, so equal weights); a fresh site folder, as the run's sites had in round 1.
    settings = runs["settings"]
    start = initial_weights(settings)
    updates = [train_site(settings, s, 1, start, tmp_path)[0] for s in range(2)]
    for name, value in runs["plain1"]["weights"].items():
        np.testing.assert_allclose(value, (updates[0][name] + updates[1][name]) / 2, rtol=0, atol=1e-6)


def test_the_server_receives_no_site_experience(runs):
    settings = runs["settings"]
    secure = runs["secure3/received"]
    assert len(secure) >= 2 * 2 * 3  # mask and unmask replies of two sites in three rounds (plus setup)
    obs = [_observation_bytes(settings, s) for s in range(2)]
    for msg in secure:
        # Secure replies are protocol records only: no arrays, no metrics, nothing in the clear.
        assert list(msg.content.keys()) == ["secagg"], list(msg.content.keys())
        record = msg.content["secagg"]
        assert isinstance(record, ConfigRecord)
        for value in record.values():
            assert isinstance(value, (bytes, str, int, bool)), type(value)
            if isinstance(value, bytes):
                for o in obs:
                    assert o[:32] not in value  # not even one observation row
    plain = runs["plain3/received"]
    assert plain
    for msg in plain:
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        assert all(k.startswith(ACTOR) for k in arrays.keys())  # the actor only (critic not shared)
        assert set(msg.content["metrics"].keys()) == {"num-examples", "train_return", "train-seconds"}


def test_resumed_run_equals_uninterrupted_run(runs):
    resumed, whole = runs["secure3-resumed"], runs["secure3"]
    for name, value in whole["weights"].items():
        np.testing.assert_array_equal(resumed["weights"][name], value)
    strip = [{k: v for k, v in r.items() if k != "timing"} for r in whole["history"]]
    assert [{k: v for k, v in r.items() if k != "timing"} for r in resumed["history"]] == strip
    # The plain loop too (resumed after round 1 from its checkpoint).
    assert load_server_checkpoint(Path(runs["settings"].site_dir).parent / "plain")["round"] == 3


@pytest.mark.parametrize("override, field", [
    ("num_sites=1", "num_sites"),
    ("train.lr=-1", "train.lr"),
    ("train.env=mpe/simple_tag-v3", "train.env"),
    ("ratio_high=2", "ratio_high"),
    ("landmark_shift=-1", "landmark_shift"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, override, field):
    from experiments.cli import main as cli_main

    out = tmp_path / "run"
    assert cli_main(["run", "fed_mappo", "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert field in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_deployment_engine_gives_the_simulation_result(runs, tmp_path):
    # A SuperLink and two SuperNodes on 127.0.0.1, the apps loaded by `flwr run`: the secure
    # run's global model equals the simulation engine's, bit for bit (same sites, same seeds).
    from federated.fed_mappo import deploy

    settings = runs["settings"].model_copy(update={"aggregation": "secure", "site_dir": str(tmp_path / "sites")})
    result = deploy(settings, tmp_path / "deploy", timeout=500)
    assert [r["round"] for r in result["history"]] == [0, 1, 2, 3]
    for name, value in runs["secure3"]["weights"].items():
        np.testing.assert_array_equal(result["weights"][name], value)
