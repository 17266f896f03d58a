"""Run-config defaults live once (FedSettings) and pyproject's [tool.flwr.app.config] equals them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federated.settings import Fault, FedSettings

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_flower_config_equals_the_code_defaults() -> None:
    flwr = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert flwr["config"] == FedSettings().to_run_config()
    assert flwr["components"] == {"serverapp": "federated.server_app:app",
                                  "clientapp": "federated.client_app:app"}


def test_run_config_round_trip_and_int_to_float() -> None:
    s = FedSettings(num_partitions=4, alpha=0.3, faults="2:1:raise, 3:0:exit")
    assert FedSettings.from_run_config(s.to_run_config()) == s
    assert FedSettings.from_run_config({"alpha": 1}).alpha == 1.0
    assert s.fault_list() == [Fault(2, 1, "raise"), Fault(3, 0, "exit")]
    assert s.fault_for(3, 0) == "exit" and s.fault_for(3, 1) is None


@pytest.mark.parametrize(("config", "match"), [
    ({"rounds": 3}, "unknown run-config key 'rounds'"),
    ({"num-server-rounds": "3"}, "must be int"),
    ({"faults": "2-1-raise"}, "ROUND:PARTITION:MODE"),
    ({"alpha": 0.0}, "alpha must be > 0"),
    ({"num-partitions": 2, "min-replies": 3}, "min_replies"),
])
def test_bad_run_config_is_rejected(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FedSettings.from_run_config(config)
