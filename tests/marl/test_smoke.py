"""A few hundred training steps on every registered environment and on the batched one."""

from __future__ import annotations

import math

import pytest
import torch

import envs
from experiments import runner
from marl.mappo import MAPPO, MAPPOConfig
from marl.parallel_batch import ParallelBatch


def _train(cfg: MAPPOConfig) -> tuple[MAPPO, list[dict]]:
    trainer = MAPPO(cfg, seed=0)
    before = [p.detach().clone() for p in trainer.actor.parameters()]
    metrics = [trainer.train_iteration() for _ in range(trainer.num_updates)]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.actor.parameters(), strict=True)), "the actor never changed"
    for m in metrics:
        assert all(math.isfinite(m[k]) for k in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    assert metrics[-1]["env_steps"] == trainer.num_updates * cfg.num_envs * cfg.rollout_steps
    return trainer, metrics


CASES = [(env_id, True) for env_id in envs.registered() if not env_id.startswith("toy/")] + [("mpe/simple_spread-v3", False)]
# Smaller images and episodes keep a smoke run of the image environment to seconds.
KWARGS = {"butterfly/cooperative_pong-v6": {"render_ratio": 8, "max_cycles": 30}}


@pytest.mark.parametrize(("env_id", "central"), CASES)
def test_parallel_env_backend(env_id: str, central: bool) -> None:
    cfg = MAPPOConfig(env=env_id, backend="parallel", num_envs=2, num_minibatches=1, rollout_steps=25, total_steps=100,
                      central_critic=central, share_params=not central, update_epochs=1, env_kwargs=KWARGS.get(env_id, {}))
    trainer, metrics = _train(cfg)
    assert len(metrics) == 2
    obs = trainer.env.reset(seed=0)[0]
    assert trainer.greedy_policy(obs).shape[:2] == (2, trainer.num_agents)


@pytest.mark.parametrize("continuous", [False, True])
def test_batched_backend(continuous: bool) -> None:
    cfg = MAPPOConfig(num_envs=8, rollout_steps=25, total_steps=400, update_epochs=2,
                      env_kwargs={"continuous_actions": continuous})
    trainer, metrics = _train(cfg)
    # Every rollout of 25 steps is exactly one simple_spread episode per environment.
    assert [m["episodes"] for m in metrics] == [8, 8]
    assert all(-200 < m["train_return"] < 0 for m in metrics)


def test_parallel_batch_replays_its_state_exactly() -> None:
    batch = ParallelBatch("mpe/simple_spread-v3", 2, seed=3)
    batch.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    acts = [torch.randint(0, 5, (2, 3), generator=gen) for _ in range(30)]
    for a in acts[:10]:
        batch.step(a)
    saved = batch.get_state()
    first = [batch.step(a) for a in acts[10:]]
    batch.load_state(saved)
    second = [batch.step(a) for a in acts[10:]]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[3], y[3])
    assert any(bool(x[4]["done"].any()) for x in first), "the replayed stretch must cross an episode end"


def test_config_errors_name_the_key() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="num_minibatches"):
        MAPPOConfig(num_envs=2, num_minibatches=4)
    with pytest.raises(ValidationError, match="backend"):
        MAPPOConfig(backend="threads")


def test_ctde_compare_kind_runs_and_draws(tmp_path) -> None:
    overrides = ["train.total_steps=200", "train.num_envs=4", "train.num_minibatches=1", "train.update_epochs=1", "eval_every=1",
                 "eval_episodes=4", "seeds=[0,1]", "checkpoint_every=1"]
    rundir = runner.run("ctde_spread", out=tmp_path / "run", overrides=overrides, quiet=True)
    summary = rundir.read_summary()
    assert summary["status"] == "complete"
    head = summary["headline"]
    assert head["env_steps"] == 200 and head["scripted_return"] > head["random_return"]
    assert (rundir.figures_dir / "learning_curve.png").is_file()
    runs = {m["run"] for m in rundir.read_metrics() if "run" in m}
    assert runs == {"MAPPO/seed0", "MAPPO/seed1", "IPPO/seed0", "IPPO/seed1"}
