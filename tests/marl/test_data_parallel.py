"""Data-parallel MAPPO: N learners on shards of the environments take one process's optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import marl_toy_envs  # noqa: F401  (registers toy/leave-v0; forked learners inherit it)
import pytest
import torch

from experiments.cli import main as cli
from marl.distributed import LearnerJob, run_local
from marl.mappo import MAPPO, MAPPOConfig


def one_process(cfg: MAPPOConfig, seed: int) -> tuple[MAPPO, list[dict]]:
    trainer = MAPPO(cfg, seed)
    try:
        return trainer, [trainer.train_iteration() for _ in range(trainer.num_updates)]
    finally:
        trainer.env.close()


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("dtype", "workers", "tol", "base"), [
    # Vectorized simple_spread in float64, 7 environments over 3 learners (shards of 3, 2, 2;
    # some minibatches miss a learner entirely).
    ("float64", 3, 1e-12, {"num_envs": 7, "rollout_steps": 25, "total_steps": 7 * 25 * 3, "num_minibatches": 3}),
    # Copies of a ParallelEnv whose agents leave early (masks in every loss), float32.
    ("float32", 2, 1e-6, {"env": "toy/leave-v0", "backend": "parallel", "num_envs": 4, "rollout_steps": 8,
                          "total_steps": 4 * 8 * 3, "num_minibatches": 2}),
])
def test_n_learners_equal_one_process_on_the_union_batch(dtype: str, workers: int, tol: float, base: dict) -> None:
    cfg = MAPPOConfig(**base, update_epochs=2, hidden=16, dtype=dtype)
    # Prepare: the reference, one process on all the environments.
    ref, ref_metrics = one_process(cfg, seed=3)
    # Execute: the same run on `workers` learners summing gradients over the ring.
    job = LearnerJob(config=cfg.model_copy(update={"workers": workers}).model_dump(), seed=3, return_parameters=True)
    outs = run_local(job, timeout_s=300, start_method="fork")
    # Assert: every learner holds the reference's parameters after every update of the run.
    params = list(ref.learnable.parameters())
    assert params[0].dtype == getattr(torch, dtype)
    for out in outs:
        assert max_diff(out["parameters"], params) <= tol
    moved = max_diff(params, list(MAPPO(cfg, seed=3).learnable.parameters()))
    assert moved > 1e3 * tol, "training moved the parameters (the comparison means something)"
    got = outs[0]["metrics"]
    assert [m["episodes"] for m in got] == [m["episodes"] for m in ref_metrics]
    for m, r in zip(got, ref_metrics, strict=True):
        for key in ("train_return", "policy_loss", "value_loss", "entropy"):
            if r[key] is not None:
                assert m[key] == pytest.approx(r[key], rel=1e-4, abs=1e-5), key
    assert outs[0]["allreduce_s"][-1] > 0


def test_a_learner_without_its_communicator_is_refused() -> None:
    with pytest.raises(ValueError, match="workers = 2 needs each learner's communicator"):
        MAPPO(MAPPOConfig(num_envs=4, workers=2), seed=0)


@pytest.mark.parametrize(("override", "message"), [
    ("train.workers=0", "config key 'train.workers' = 0 is invalid"),
    ("train.workers=65", "config key 'train.workers' = 65 is invalid"),
    ("train.workers=5", "workers = 5 exceeds num_envs = 4"),
    ("train.env_workers=2", "env_workers = 2 steps copies of a ParallelEnv"),
])
def test_bad_worker_counts_exit_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                                                   message: str) -> None:
    out = tmp_path / "run"
    assert cli(["run", "mappo_spread", "--out", str(out), "train.num_envs=4", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_mappo_kind_trains_on_learner_processes(tmp_path: Path) -> None:
    from experiments import runner
    from marl import load_policy

    out = tmp_path / "run"
    runner.run("mappo_spread", out=out, quiet=True, overrides=[
        "train.workers=2", "train.num_envs=4", "train.rollout_steps=25", "train.total_steps=200", "train.num_minibatches=2",
        "train.update_epochs=1", "eval_every=2", "eval_episodes=4"])
    # Each update's metrics and rank 0's evaluation at the end, logged by the runner.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [r["update"] for r in lines if r.get("run") == "MAPPO/seed0" and not r.get("eval")]
    evals = [r for r in lines if r.get("eval")]
    assert updates == [1, 2] and [e["update"] for e in evals] == [2] and evals[0]["return"] < 0
    policy = load_policy(out / "policy")
    assert policy(torch.zeros(5, 3, 18)).shape == (5, 3)


def test_the_learners_command_line_refuses_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    from marl.distributed import main

    assert main(["workers=0"]) == 2
    assert "config key 'workers' = 0 is invalid" in capsys.readouterr().err
    assert main(["workers=3", "num_envs=2", "num_minibatches=1"]) == 2
    assert "workers = 3 exceeds num_envs = 2" in capsys.readouterr().err


def test_shards_of_the_batched_env_start_and_restart_as_the_whole_batch() -> None:
    from envs.vec_spread import VecSimpleSpread

    whole = VecSimpleSpread(5, max_cycles=3, seed=7)
    parts = [VecSimpleSpread(hi - lo, max_cycles=3, seed=7, shard=(lo, 5)) for lo, hi in ((0, 2), (2, 5))]
    actions = torch.randint(0, 5, (7, 5, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(whole.reset(seed=7)[0], torch.cat([p.reset(seed=7)[0] for p in parts]))
    for a in actions:  # max_cycles=3: every world restarts twice on the way
        want = whole.step(a)[0]
        got = torch.cat([p.step(a[lo:hi])[0] for p, (lo, hi) in zip(parts, ((0, 2), (2, 5)), strict=True)])
        # Every (re)start draws the whole batch's worlds exactly; the dynamics in between agree to
        # the last bit or so (other batch sizes, other vectorized loops).
        assert torch.equal(whole.landmark_pos, torch.cat([p.landmark_pos for p in parts]))
        if int(whole.steps[0]) == 0:
            assert torch.equal(whole.agent_pos, torch.cat([p.agent_pos for p in parts]))
        assert torch.allclose(want, got, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="shard"):
        VecSimpleSpread(3, shard=(4, 5))


def test_the_scale_out_kind_compares_learners_and_threads_on_one_learning_curve(tmp_path: Path) -> None:
    from experiments import runner

    out = tmp_path / "scale"
    runner.run("mappo_scale_out", out=out, quiet=True, overrides=[
        "train.num_envs=8", "train.rollout_steps=25", "train.total_steps=400", "train.num_minibatches=2",
        "train.update_epochs=1", "counts=[1,2]", "eval_every=1", "eval_episodes=4"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curves: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        curves.setdefault((r["how"], r["n"]), []).append(r["greedy_return"])
    assert set(curves) == {("workers", 1), ("workers", 2), ("threads", 2)}
    # Learners and threads change the clock, not the learning: one curve (float32, other summation orders).
    for curve in curves.values():
        assert curve == pytest.approx(curves["workers", 1], abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())["headline"]
    assert summary["workers_2_ring_s_per_update"] > 0 and summary["workers_2_ring_alone_s_per_update"] > 0
    assert any(line.startswith("2 learners: per update") for line in summary["verdict"])
    assert (out / "figures" / "mappo_scale_out.png").stat().st_size > 0
