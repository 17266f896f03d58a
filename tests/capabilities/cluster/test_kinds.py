"""The gang-scheduling experiment kind: a tiny run, determinism, bad config values exit 2."""

import pytest

from experiments import UserError, runner


def test_gang_scheduling_kind_repeats_exactly_and_shows_the_deadlock(tmp_path):
    cfg = {"kind": "gang_scheduling", "jobs": 30, "arrival_rates": [2.0], "trials": 2}
    a = runner.run(cfg, out=tmp_path / "a", quiet=True)
    b = runner.run(cfg, out=tmp_path / "b", quiet=True)
    assert a.metrics_path.read_bytes() == b.metrics_path.read_bytes()
    example = {r["policy"]: r for r in a.read_metrics() if r.get("case") == "two_gangs_on_6_slots"}
    assert example["greedy"]["deadlocked"] and example["greedy"]["completed"] == 0
    assert example["gang"]["completed"] == example["rack_aware"]["completed"] == 2
    h = a.read_summary()["headline"]
    assert h["gang_deadlocked_trials"] == 0 and h["trials"] == 2


def test_bad_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="'worker_choices' = \\[1, 100\\] is invalid: .*gang sizes \\[100\\] are outside"):
        runner.run({"kind": "gang_scheduling", "worker_choices": [1, 100]}, out=tmp_path / "x", quiet=True)
    with pytest.raises(UserError, match="'gang_size' = 50 is invalid: .*larger than the cluster"):
        runner.run({"kind": "gang_placement_ray", "gang_size": 50}, out=tmp_path / "y", quiet=True)
    with pytest.raises(UserError, match="'strategies.0' = 'TIGHT' is invalid"):
        runner.run({"kind": "gang_placement_ray", "strategies": ["TIGHT"]}, out=tmp_path / "z", quiet=True)
    with pytest.raises(UserError, match="racks"):
        runner.run({"kind": "gang_scheduling", "racks": 0}, out=tmp_path / "w", quiet=True)
