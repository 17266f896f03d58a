"""swarm/flock-v0: PettingZoo conformance, the observation by hand, and a rule driving it."""

import numpy as np
import pytest

import envs
from swarm.env import AlignPolicy, FlockEnv
from swarm.metrics import polarization


def test_flock_env_passes_check_env():
    envs.check_env(envs.make("swarm/flock-v0", n_agents=6, k=3, max_cycles=30))


def test_observation_is_neighbours_in_the_agents_own_frame():
    env = FlockEnv(n_agents=3, k=2, box=10.0)
    env.reset(seed=0)
    env.positions = np.array([[5.0, 5.0], [5.0, 6.0], [3.0, 5.0]])
    env.angles = np.array([np.pi / 2, 0.0, np.pi])
    obs, _ = env._observe()
    # Agent 0 heads +y. Agent 1 is 1 ahead -> (1, 0); agent 2 is 2 to its left -> (0, 2).
    # Scaled by half the box (5). Relative headings: -pi/2 and +pi/2.
    np.testing.assert_allclose(obs["agent_0"], [0.2, 0.0, 0.0, 0.4, 0.0, 0.0, -1.0, 1.0], atol=1e-6)


def test_state_holds_every_position_and_heading():
    env = envs.make("swarm/flock-v0", n_agents=4, k=2)
    env.reset(seed=1)
    s = env.state()
    assert s.shape == env.state_space.shape == (16,)
    np.testing.assert_allclose(s[:8], (env.positions / env.box).ravel(), atol=1e-6)
    np.testing.assert_allclose(s[8:12], np.cos(env.angles), atol=1e-6)


def test_the_alignment_rule_drives_the_env_to_order():
    env = envs.make("swarm/flock-v0", n_agents=20, k=4, max_cycles=150)
    obs, _ = env.reset(seed=3)
    policy = AlignPolicy(env)
    start = polarization(env.angles)
    while env.agents:
        names = list(env.agents)
        actions = policy(np.stack([obs[a] for a in names]))
        obs, rewards, *_ = env.step(dict(zip(names, actions, strict=True)))
    assert start < 0.5 and polarization(env.angles) > 0.95
    assert np.mean(list(rewards.values())) > 0.5  # aligned neighbours earn close to 1


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(n_agents=1), r"n_agents must be an integer in \[2, inf\)"),
    (dict(n_agents=5, k=5), r"k must be an integer in \[1, 4\]"),
    (dict(n_turns=4), r"n_turns must be an odd integer"),
])
def test_bad_env_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.make("swarm/flock-v0", **kwargs)
