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


def test_image_encoder_averages_whole_blocks_of_a_large_image() -> None:
    # 100x170 RGB: k = ceil(170 / 84) = 3, so the conv reads the mean of each 3x3 block
    # (33x56 of them; the rows and columns past the last whole block are dropped).
    from marl.networks import ImageEncoder

    h, w, c = 100, 170, 3
    enc = ImageEncoder((h, w, c), 8, scale=255.0, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 256, (2, h * w * c), generator=torch.Generator().manual_seed(1)).float()
    img = x.reshape(2, h, w, c)[:, :99, :168].reshape(2, 33, 3, 56, 3, c)
    expected = img.mean(dim=(2, 4)).permute(0, 3, 1, 2) / 255.0  # a plain mean per block
    pooled = enc.pool(x.reshape(2, h, w, c).permute(0, 3, 1, 2)) / enc.scale
    assert pooled.shape == (2, c, 33, 56)
    torch.testing.assert_close(pooled, expected, rtol=1e-6, atol=1e-6)
    assert enc(x).shape == (2, 8)


def test_an_image_state_gets_a_cnn_critic_and_a_flat_state_an_mlp() -> None:
    from gymnasium import spaces

    from marl.networks import state_image

    screen = spaces.Box(0, 255, (70, 120, 3), dtype="uint8")
    assert state_image(screen) == {"image_shape": (70, 120, 3), "image_scale": 255.0}
    assert state_image(screen, "mlp") == {}
    assert state_image(spaces.Box(-1.0, 1.0, (54,))) == {}
    assert state_image(None) == {}
    # cooperative_pong's state is the screen: the critic reads it through a CNN, not a weight per pixel.
    cfg = MAPPOConfig(env="butterfly/cooperative_pong-v6", env_kwargs={"render_ratio": 8, "max_cycles": 4}, backend="parallel",
                      num_envs=1, num_minibatches=1, rollout_steps=4, total_steps=4)
    trainer = MAPPO(cfg, seed=0)
    try:
        critic = trainer.critic
        assert critic.encoder is not None and critic.encoder.shape == (70, 120, 3) and critic.encoder.scale == 255.0
        assert sum(p.numel() for p in critic.parameters()) < trainer.state_dim * cfg.hidden / 5  # 0.24M vs 1.6M
        state = (torch.rand(2, trainer.state_dim) * 255).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(state).sum(), state)
        assert grad.abs().sum() > 0
        mlp = MAPPO(cfg.model_copy(update={"encoder": "mlp"}), seed=0)
        assert mlp.critic.encoder is None and mlp.critic.net[0].in_features == trainer.state_dim
        mlp.env.close()
    finally:
        trainer.env.close()


def test_log_std_init_sets_the_initial_exploration_of_box_actions() -> None:
    import marl_toy_envs  # noqa: F401  (registers toy/mixed-v0: one Discrete and one Box agent)
    from pydantic import ValidationError

    cfg = MAPPOConfig(env="toy/mixed-v0", backend="parallel", num_envs=2, num_minibatches=1, total_steps=8, rollout_steps=4)
    assert MAPPOConfig.model_fields["log_std_init"].default == -0.5
    for value in (-0.5, -1.6):
        trainer = MAPPO(cfg.model_copy(update={"log_std_init": value}), seed=0)
        stds = [a.log_std for a in trainer.actor.actors if a.continuous]
        assert len(stds) == 1 and torch.all(stds[0] == value)
        trainer.env.close()
    with pytest.raises(ValidationError, match="log_std_init"):
        MAPPOConfig(log_std_init=3.0)
