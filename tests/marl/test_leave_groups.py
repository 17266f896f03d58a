"""Agents that leave early, groups of mixed spaces, bounded continuous actions, teams."""

from __future__ import annotations

import math

import marl_toy_envs  # noqa: F401  (registers toy/leave-v0 and toy/mixed-v0)
import numpy as np
import pytest
import torch

import envs
from marl.evaluate import evaluate, random_policy
from marl.gae import compute_gae
from marl.mappo import MAPPO, MAPPOConfig
from marl.networks import Actor


def test_masked_gae_equals_a_hand_computed_example() -> None:
    # Prepare: agent 1 acts at t=0 and terminates there; afterwards its entries are junk (9.0)
    # that must not leak. Agent 0 lives on; its episode is cut by the rollout (bootstrap 0.6).
    r = torch.tensor([[1.0, 2.0], [1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.5, 0.4], [0.5, 9.0], [0.5, 9.0]])
    nv = torch.tensor([[0.5, 9.0], [0.5, 9.0], [0.6, 9.0]])
    term = torch.tensor([[False, True], [False, False], [False, False]])
    trunc = torch.zeros(3, 2, dtype=torch.bool)
    active = torch.tensor([[True, True], [True, False], [True, False]])
    # Execute
    adv, ret = compute_gae(r, v, nv, term, trunc, gamma=0.9, gae_lambda=0.8, active=active)
    # Assert, by hand: agent 1: A0 = 2 - 0.4 = 1.6 (no bootstrap), then 0.
    # Agent 0: d2 = 1 + 0.9*0.6 - 0.5 = 1.04, d1 = d0 = 1 + 0.9*0.5 - 0.5 = 0.95;
    # A2 = 1.04, A1 = 0.95 + 0.72*1.04 = 1.6988, A0 = 0.95 + 0.72*1.6988 = 2.173136.
    expected = torch.tensor([[2.173136, 1.6], [1.6988, 0.0], [1.04, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret[:, 0], expected[:, 0] + 0.5, atol=1e-6)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_agents_leaving_at_different_steps_train_with_masks() -> None:
    cfg = MAPPOConfig(env="toy/leave-v0", backend="parallel", num_envs=4, rollout_steps=8, total_steps=4 * 8 * 8,
                      num_minibatches=2, update_epochs=4, lr=1e-2, hidden=32)
    trainer = MAPPO(cfg, seed=0)
    eval_env = trainer.env.__class__("toy/leave-v0", 32, seed=1)
    before = evaluate(trainer.greedy_policy, eval_env, seed=5)["return"]
    buf = trainer.collect()
    # Agent k is present for the first k + 2 steps of each 4-step episode, and nowhere else.
    t = torch.arange(8).unsqueeze(1)
    expected = (t % 4) < torch.tensor([2, 3, 4])
    assert torch.equal(buf["active"], expected.unsqueeze(1).expand(8, 4, 3))
    assert torch.equal(buf["reward"][~buf["active"]], torch.zeros(int((~buf["active"]).sum())))
    adv, _ = trainer.advantages(buf)
    assert torch.all(adv[~buf["active"]] == 0)
    trainer.update(buf)
    rand = evaluate(random_policy(eval_env, seed=0), eval_env, seed=5)["return"]
    for _ in range(trainer.num_updates - 1):
        m = trainer.train_iteration()
        assert all(math.isfinite(m[k]) for k in ("policy_loss", "value_loss", "entropy"))
    after = evaluate(trainer.greedy_policy, eval_env, seed=5)["return"]
    # Random earns 1/3 per agent-step: (2 + 3 + 4) / 3 / 3 = 1.0 per agent; the best is 3.0.
    assert rand == pytest.approx(1.0, abs=0.15)
    assert after > 2.5 and after > before + 1.0


def test_a_discrete_and_a_box_group_train_one_actor_each_inside_the_bounds() -> None:
    cfg = MAPPOConfig(env="toy/mixed-v0", backend="parallel", num_envs=4, rollout_steps=8, total_steps=4 * 8 * 6,
                      num_minibatches=2, update_epochs=2, hidden=16)
    trainer = MAPPO(cfg, seed=0)
    assert [(g.name, g.discrete, g.agents) for g in trainer.groups] == [("picker", True, (0,)), ("mover", False, (1,))]
    assert len(trainer.actor.actors) == 2
    before = [_params(a) for a in trainer.actor.actors]
    for _ in range(trainer.num_updates):
        trainer.train_iteration()
    for old, actor in zip(before, trainer.actor.actors, strict=True):
        assert any(not torch.equal(a, b) for a, b in zip(old, actor.parameters(), strict=True)), "an actor never changed"
    moves = np.stack([m for env in trainer.env.envs for m in env.mover_actions])
    assert len(moves) == cfg.num_envs * trainer.num_updates * cfg.rollout_steps
    assert moves.min() >= -2.0 and moves.max() <= 2.0
    assert np.abs(moves).max() > 0.05  # the squashed actions really vary inside the bounds


def test_squashed_gaussian_log_prob_matches_torch_transforms() -> None:
    # Reference: torch's own TransformedDistribution of the same Normal through tanh and the affine map.
    gen = torch.Generator().manual_seed(0)
    actor = Actor(2, 3, 2, continuous=True, share_params=True, low=[-2.0, 0.0], high=[2.0, 1.0], generator=gen)
    obs = torch.randn(5, 2, 3, generator=gen)
    dist = actor.distribution(obs)
    u = dist.sample()
    logp, _ = actor.log_prob_entropy(dist, u)
    a = actor.to_env(u)
    T = torch.distributions.transforms
    ref = torch.distributions.TransformedDistribution(
        dist, [T.TanhTransform(), T.AffineTransform(actor.center, actor.half_range)])
    assert torch.allclose(logp, ref.log_prob(a).sum(-1), atol=1e-4)
    assert torch.all(a[..., 0].abs() <= 2.0) and torch.all((a[..., 1] >= 0) & (a[..., 1] <= 1))


def test_competing_teams_learn_apart_and_report_apart() -> None:
    cfg = MAPPOConfig(env="mpe/simple_tag-v3", backend="parallel", num_envs=2, rollout_steps=25, total_steps=100,
                      num_minibatches=1, update_epochs=1, env_kwargs={"max_cycles": 25})
    trainer = MAPPO(cfg, seed=0)
    assert trainer.teams == {"adversary": [0, 1, 2], "agent": [3]}
    assert len(trainer.optimizers) == 2 and len(trainer.critics) == 2
    m = trainer.train_iteration()
    assert "train_return" not in m and {"train_return_adversary", "train_return_agent"} <= set(m)
    # In simple_tag the prey's reward is the negative of what the predators collect by tagging
    # (plus its boundary penalty): the two teams' returns must not be averaged into one.
    result = evaluate(random_policy(trainer.env, 0), trainer.env, seed=0, teams=trainer.teams)
    assert "return" not in result and {"return_adversary", "return_agent"} <= set(result)


def test_check_env_refuses_what_the_trainer_cannot_act_in() -> None:
    from gymnasium import spaces

    env = marl_toy_envs.MixedEnv()
    env._act_spaces["mover_0"] = spaces.MultiDiscrete([2, 2])
    with pytest.raises(envs.EnvCheckError, match="'mover_0'.*MultiDiscrete"):
        envs.check_env(env)
    # What the trainer handles passes whole: agents that leave, mixed Discrete and Box agents.
    envs.check_env(marl_toy_envs.LeaveEnv())
    envs.check_env(marl_toy_envs.MixedEnv())


def test_env_worker_processes_train_exactly_as_one_process() -> None:
    # Each copy owns its seeds, so where it is stepped cannot change a single number.
    base = {"env": "toy/leave-v0", "backend": "parallel", "num_envs": 4, "rollout_steps": 8, "total_steps": 64,
            "num_minibatches": 2, "update_epochs": 1}
    runs = []
    for env_workers in (0, 2):
        trainer = MAPPO(MAPPOConfig(env_workers=env_workers, **base), seed=0)
        try:
            assert trainer.env.env_workers == env_workers
            runs.append([trainer.train_iteration() for _ in range(trainer.num_updates)])
        finally:
            trainer.env.close()
    assert runs[0] == runs[1]


def test_image_observations_get_a_cnn_and_stay_decentralized() -> None:
    # cooperative_pong at render_ratio 8: each paddle sees a 70x120 RGB image (uint8).
    from marl.parallel_batch import ParallelBatch
    from marl.policy import GroupedActor, groups_of

    batch = ParallelBatch("butterfly/cooperative_pong-v6", 1, render_ratio=8)
    groups = groups_of(batch)
    assert [(g.obs_shape, g.obs_scale) for g in groups] == [((70, 120, 3), 255.0)]
    gen = torch.Generator().manual_seed(0)
    cnn = GroupedActor(groups, 2, share_params=True, hidden=16, generator=gen)
    mlp = GroupedActor(groups, 2, share_params=True, hidden=16, encoder="mlp", generator=gen)
    assert cnn.actors[0].encoder is not None and mlp.actors[0].encoder is None
    obs = (torch.rand(3, 2, batch.obs_dim, generator=gen) * 255).requires_grad_(True)
    logp, _ = cnn.log_prob_entropy(obs, torch.zeros(3, 2, 1))
    (grad,) = torch.autograd.grad(logp[:, 0].sum(), obs)
    assert torch.all(grad[:, 1] == 0) and grad[:, 0].abs().sum() > 0  # paddle 0 reads its own image only
    batch.close()
