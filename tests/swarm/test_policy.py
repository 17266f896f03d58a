"""Perception + policy + motion: a plain function drives the swarm; flock-v0 sees what KNearest sees."""

import math

import numpy as np
import pytest

import envs
import swarm
from swarm.engine import advance, initial_state
from swarm.env import AlignPolicy, FlockEnv
from swarm.neighbours import minimum_image
from swarm.perception import KNearest, Motion, ZoneSums


def keep_heading(view):
    """A plain function: every agent keeps its heading (a zero turn)."""
    return view.directions


def _straight_line(positions, directions, speed, box, steps):
    """Reference: each step adds speed x heading and maps back into [0, box) with Python's modulo."""
    pos = positions.copy()
    for _ in range(steps):
        pos = pos + speed * directions
        pos = pos % box
        pos[pos >= box] -= box
    return pos


def test_a_plain_function_drives_simulate_keeping_every_heading():
    n, steps, speed, box, seed = 60, 7, 0.7, 20.0, 3
    r = swarm.simulate(keep_heading, n, steps, seed=seed, box=box, record=("polarization",),
                       perception=ZoneSums(1.0, 1.0, 2.0), motion=Motion(speed))
    s_init, _ = np.random.SeedSequence(seed).spawn(2)
    pos0, dirs0 = initial_state(n, box, np.random.default_rng(s_init))
    np.testing.assert_array_equal(r.directions, np.stack([np.cos(r.headings), np.sin(r.headings)], 1))
    np.testing.assert_array_equal(r.headings, np.arctan2(dirs0[:, 1], dirs0[:, 0]))
    np.testing.assert_array_equal(r.positions, _straight_line(pos0, dirs0, speed, box, steps))
    # The polarization never changes: nobody turns.
    np.testing.assert_allclose(r.metrics["polarization"], swarm.polarization(dirs0), rtol=0, atol=1e-15)


def test_a_plain_function_drives_the_mesa_model_and_so_does_an_agent_holding_it():
    for driver in (keep_heading, envs.Agent(id="flock", policy=keep_heading)):
        m = swarm.SwarmModel(driver, 200, box=50.0, seed=4, perception=ZoneSums(0.0, 0.0, 5.0), motion=Motion(1.5))
        pos0, dirs0 = m.positions.copy(), m.directions.copy()
        for _ in range(5):
            m.step()
        np.testing.assert_array_equal(m.directions, dirs0)
        np.testing.assert_array_equal(m.positions, _straight_line(pos0, dirs0, 1.5, 50.0, 5))
        np.testing.assert_array_equal(list(m.agents)[17].position, m.positions[17])
        assert len(m.datacollector.get_model_vars_dataframe()) == 6


def test_a_zero_turn_through_the_knn_view_goes_straight():
    motion = Motion(0.25, turns=(-0.3, 0.0, 0.3))
    m = swarm.SwarmModel(lambda obs: np.ones(len(obs), dtype=int), 150, box=30.0, seed=5,
                         perception=KNearest(3, 5.0), motion=motion)
    pos0, dirs0 = m.positions.copy(), m.directions.copy()
    for _ in range(4):
        m.step()
    np.testing.assert_allclose(m.directions, dirs0, rtol=0, atol=1e-15)
    step = minimum_image(m.positions - pos0, 30.0)
    np.testing.assert_allclose(step, 4 * 0.25 * dirs0, rtol=0, atol=1e-12)


def test_turns_turn_each_agent_by_its_own_action():
    motion = Motion(0.0, turns=(-0.5, 0.0, 0.5))
    dirs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    _, new = advance(pos, dirs, lambda obs: np.array([0, 1, 2]), 10.0, perception=KNearest(1, 5.0), motion=motion)
    got = np.arctan2(new[:, 1], new[:, 0])
    np.testing.assert_allclose(got, [-0.5, math.pi / 2, -math.pi + 0.5], atol=1e-12)


def test_a_policy_without_perception_or_with_bad_actions_is_refused_by_name():
    with pytest.raises(ValueError, match="perception: this policy has none of its own"):
        swarm.simulate(keep_heading, 10, 1, box=10.0)
    with pytest.raises(ValueError, match="motion: this policy has none of its own"):
        swarm.SwarmModel(keep_heading, 10, box=10.0, perception=ZoneSums(0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"turn indices must lie in \[0, 2\]"):
        swarm.simulate(lambda obs: np.full(len(obs), 3), 10, 1, box=10.0,
                       perception=KNearest(2, 5.0), motion=Motion(1.0, turns=(-0.1, 0.0, 0.1)))
    with pytest.raises(ValueError, match=r"one \(x, y\) heading per agent"):
        swarm.simulate(lambda view: view.directions[:, 0], 10, 1, box=10.0,
                       perception=ZoneSums(0.0, 0.0, 1.0), motion=Motion(1.0))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, inf\)"):
        KNearest(0, 1.0)
    with pytest.raises(ValueError, match="speed must be a number"):
        Motion(-1.0)


def _knn_reference(positions, angles, k, box):
    """flock-v0's observation from all N^2 pairs and heading angles (independent of the perception)."""
    n = len(positions)
    d = minimum_image(positions[None, :, :] - positions[:, None, :], box)  # d[i, j] = x_j - x_i
    r = np.hypot(d[..., 0], d[..., 1])
    np.fill_diagonal(r, np.inf)
    idx = np.argsort(r, axis=1, kind="stable")[:, :k]
    out = np.zeros((n, 4 * k))
    for i in range(n):
        for m, j in enumerate(idx[i]):
            a = -angles[i]
            dx, dy = d[i, j]
            out[i, 2 * m] = np.clip((math.cos(a) * dx - math.sin(a) * dy) / (0.5 * box), -1, 1)
            out[i, 2 * m + 1] = np.clip((math.sin(a) * dx + math.cos(a) * dy) / (0.5 * box), -1, 1)
            out[i, 2 * k + m] = math.cos(angles[j] - angles[i])
            out[i, 3 * k + m] = math.sin(angles[j] - angles[i])
    return out


def test_flock_env_observations_are_the_knn_perception_and_its_steps_are_the_engines():
    env = FlockEnv(n_agents=9, k=3, box=8.0, speed=0.3)
    obs, _ = env.reset(seed=11)
    policy = AlignPolicy(env)
    perception = KNearest(3, 4.0)
    pos, dirs = env.positions.copy(), env.directions.copy()
    for _ in range(6):
        batch = np.stack([obs[a] for a in env.possible_agents])
        seen = perception(env.positions, env.directions, env.box).observations
        np.testing.assert_array_equal(batch, seen)
        np.testing.assert_allclose(batch, _knn_reference(env.positions, env.angles, 3, 8.0), atol=1e-6)
        # The engine stepping the same policy from the same state lands where the env does.
        pos, dirs = advance(pos, dirs, policy, 8.0, perception=env.perception, motion=env.motion)
        obs, *_ = env.step(dict(zip(env.possible_agents, policy(batch), strict=True)))
        np.testing.assert_array_equal(env.positions, pos)
        np.testing.assert_array_equal(env.directions, dirs)
