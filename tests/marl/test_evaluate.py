"""The evaluator against closed-form returns, and the baselines' ordering."""

from __future__ import annotations

import pytest
import torch

import envs
from marl.evaluate import evaluate, noop_policy, random_policy, scripted_spread_policy


def test_noop_return_equals_the_closed_form() -> None:
    # Prepare: with no-op actions and no pair of agents in contact nobody moves, so every step's
    # reward is -(1 - local_ratio) * sum over landmarks of the closest agent's distance.
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=4, N=3, local_ratio=0.3, max_cycles=25, dtype="float64")
    for seed in range(100):  # the first seed whose four worlds are all contact-free
        env.reset(seed=seed)
        pos, landmarks = env.agent_pos.clone(), env.landmark_pos.clone()
        gaps = torch.cdist(pos, pos) + torch.eye(3) * 10
        if gaps.min() > 0.4:  # beyond the softplus contact range
            break
    else:
        pytest.fail("no contact-free seed among the first 100")
    per_episode = -0.7 * 25 * torch.cdist(pos, landmarks).amin(dim=1).sum(dim=1)  # [B]
    # Execute
    result = evaluate(noop_policy(env), env, seed=seed)
    # Assert
    assert result["return"] == pytest.approx(per_episode.mean().item(), abs=1e-9)
    assert result["return_std"] == pytest.approx(per_episode.std().item(), abs=1e-9)
    assert result["episodes"] == 4 and result["collisions"] == 0


def test_baselines_rank_as_published() -> None:
    # mpe2 simple_spread N=3: scripted (about -12) beats no-op and random (about -26).
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=64)
    scripted = evaluate(scripted_spread_policy(env), env, seed=0)["return"]
    noop = evaluate(noop_policy(env), env, seed=0)["return"]
    rand = evaluate(random_policy(env, seed=0), env, seed=0)["return"]
    assert scripted > noop > rand
    assert -30 < rand < -22 and -15 < scripted < -9
    # The same seed gives the same starting worlds, so the same policy scores the same.
    assert evaluate(noop_policy(env), env, seed=0)["return"] == noop


def test_scripted_agent_heads_for_its_own_landmark() -> None:
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=1)
    obs = torch.zeros(1, 3, 18)
    obs[0, 0, 4:6] = torch.tensor([0.8, 0.1])   # agent 0: landmark 0 to the right -> action 2
    obs[0, 1, 6:8] = torch.tensor([0.0, -0.5])  # agent 1: landmark 1 below -> action 3
    obs[0, 2, 8:10] = torch.tensor([0.01, 0.0])  # agent 2: on landmark 2 -> no-op
    assert scripted_spread_policy(env)(obs).tolist() == [[2, 3, 0]]
