"""Smoke runs of the training experiment kinds, tiny budgets; same seed => same metrics."""

import json

import pytest
import torch._dynamo  # noqa: F401  (the launcher's fork server preloads it; importing here costs nothing extra)

from experiments import UserError, runner
from experiments.rundir import RunDir

TINY = {
    "ring_allreduce": ["world_sizes=[2,3]", "sizes=[5,1001]", "repeats=1"],
    "zero_memory": ["world_size=2", "widths=[6,5,3]", "steps=2"],
    "ps_straggler": ["steps=4", "straggler_delay_s=0.01", "num_workers=2"],
    "scaling_dp": ["counts=[1,2]", "steps=3", "widths=[8,16,1]", "global_batch=64"],
}


@pytest.mark.parametrize("config", sorted(TINY))
def test_kind_runs_and_draws(config: str, tmp_path) -> None:
    out = runner.run(config, out=tmp_path / "a", overrides=TINY[config], quiet=True)
    summary = out.read_summary()
    assert summary["status"] == "complete"
    assert [p.name for p in out.figures()]
    metrics = out.read_metrics()
    assert metrics
    if config == "ring_allreduce":
        assert summary["headline"]["all_equal_to_gloo"] is True
        assert all(m["ring_bytes_exact"] for m in metrics if m["algorithm"] == "ring")
    if config == "zero_memory":
        assert summary["headline"]["max_param_diff_vs_dp"] <= 1e-6
    if config == "ps_straggler":
        assert summary["headline"]["bsp_equals_sync_sgd"] is True
        assert summary["headline"]["ssp_bound_held"] is True
    if config == "scaling_dp":
        assert summary["headline"]["same_losses"] is True
    if config in ("ring_allreduce", "zero_memory"):
        again = runner.run(config, out=tmp_path / "b", overrides=TINY[config], quiet=True)
        assert (again.path / "metrics.jsonl").read_text() == (out.path / "metrics.jsonl").read_text()


def test_bad_config_values_exit_with_the_key() -> None:
    with pytest.raises(UserError, match="world_sizes"):
        runner.prepare("ring_allreduce", overrides=["world_sizes=[1]"])
    with pytest.raises(UserError, match="modes"):
        runner.prepare("ps_straggler", overrides=["modes=[gossip]"])
    with pytest.raises(UserError, match="dtype"):
        runner.prepare("zero_memory", overrides=["dtype=int8"])


def test_metrics_hold_no_timings(tmp_path) -> None:
    out = runner.run("ring_allreduce", out=tmp_path / "r", overrides=TINY["ring_allreduce"], quiet=True)
    for line in (out.path / "metrics.jsonl").read_text().splitlines():
        assert "seconds" not in json.loads(line)
    assert RunDir(out.path).timings_path.exists()
