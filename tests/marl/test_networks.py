"""CTDE by construction: actors read local observations only, the central critic the state only."""

from __future__ import annotations

import pytest
import torch

import envs
from marl.mappo import MAPPO, MAPPOConfig
from marl.networks import Actor, CentralCritic, LocalCritic


@pytest.mark.parametrize("share", [True, False])
def test_actor_of_agent_i_depends_on_its_own_observation_only(share: bool) -> None:
    actor = Actor(3, 18, 5, continuous=False, share_params=share, generator=torch.Generator().manual_seed(0))
    obs = torch.randn(4, 3, 18, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logits = actor.distribution(obs).logits
    for i in range(3):
        (grad,) = torch.autograd.grad(logits[:, i].sum(), obs, retain_graph=True)
        others = [j for j in range(3) if j != i]
        assert torch.all(grad[:, others] == 0), f"agent {i}'s action depends on another agent's observation"
        assert grad[:, i].abs().sum() > 0


def test_central_critic_reads_the_global_state_and_nothing_else() -> None:
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=2)
    critic = CentralCritic(3, env.state_dim, generator=torch.Generator().manual_seed(0))
    assert critic.in_features == env.state_dim == 54
    state = env.reset(seed=0)[0].reshape(2, -1).clone().requires_grad_(True)
    values = critic(state)
    assert values.shape == (2, 3)
    # Every agent's value depends on every agent's part of the state.
    for i in range(3):
        (grad,) = torch.autograd.grad(values[:, i].sum(), state, retain_graph=True)
        for j in range(3):
            assert grad[:, 18 * j:18 * (j + 1)].abs().sum() > 0


def test_mappo_wires_state_to_the_critic_and_observations_to_the_actors() -> None:
    common = {"num_envs": 2, "num_minibatches": 1, "total_steps": 50, "rollout_steps": 25}
    mappo = MAPPO(MAPPOConfig(central_critic=True, **common), seed=0)
    ippo = MAPPO(MAPPOConfig(central_critic=False, **common), seed=0)
    assert isinstance(mappo.critic, CentralCritic) and mappo.critic.in_features == mappo.state_dim
    assert isinstance(ippo.critic, LocalCritic) and ippo.critic.in_features == ippo.obs_dim + 3
    for trainer in (mappo, ippo):
        assert trainer.actor.in_features == trainer.obs_dim + 3  # own observation + one-hot id
    # IPPO's value of agent i ignores the other agents' observations.
    obs = torch.randn(2, 3, 18, requires_grad=True)
    (grad,) = torch.autograd.grad(ippo.critic(obs)[:, 0].sum(), obs)
    assert torch.all(grad[:, 1:] == 0)
