"""The batched simple_spread against mpe2's own simple_spread_v3, whole episodes at a time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from mpe2 import simple_spread_v3

import envs


def _mpe2_world(penv) -> tuple[np.ndarray, np.ndarray]:
    world = penv.unwrapped.world
    return np.stack([a.state.p_pos for a in world.agents]), np.stack([lm.state.p_pos for lm in world.landmarks])


def _set_mpe2_world(penv, agent_pos: np.ndarray, landmark_pos: np.ndarray) -> None:
    world = penv.unwrapped.world
    for a, p in zip(world.agents, agent_pos, strict=True):
        a.state.p_pos = p.copy()
    for lm, p in zip(world.landmarks, landmark_pos, strict=True):
        lm.state.p_pos = p.copy()


def _play(N: int, local_ratio: float, continuous: bool, dtype: str, seed: int, crowded: bool, max_cycles: int = 25):
    """Drives mpe2 and the batched env from one start with one action sequence; returns max errors."""
    penv = simple_spread_v3.parallel_env(N=N, local_ratio=local_ratio, max_cycles=max_cycles, continuous_actions=continuous)
    obs, _ = penv.reset(seed=seed)
    agent_pos, landmark_pos = _mpe2_world(penv)
    if crowded:
        # Agents start within 0.2 of each other so contact forces and collision penalties happen.
        agent_pos = agent_pos[:1] + 0.1 * (agent_pos - agent_pos[:1])
        _set_mpe2_world(penv, agent_pos, landmark_pos)
        obs = {a: penv.unwrapped.observe(a) for a in penv.possible_agents}
    venv = envs.make_vec("mpe/simple_spread-v3", num_envs=1, N=N, local_ratio=local_ratio, max_cycles=max_cycles,
                         continuous_actions=continuous, dtype=dtype)
    vobs = venv.set_world(agent_pos[None], landmark_pos[None])
    names = penv.possible_agents
    ref = np.stack([obs[a] for a in names])
    obs_err = np.abs(vobs[0].numpy() - ref).max()
    rew_err = state_err = 0.0
    rng = np.random.default_rng(seed)
    collisions = 0.0
    for _ in range(max_cycles):
        act = rng.uniform(-0.3, 1.3, (N, 5)) if continuous else rng.integers(0, 5, N)
        state_ref = penv.state()
        state_err = max(state_err, np.abs(venv.state()[0].numpy() - state_ref).max())
        obs, rew, term, trunc, _ = penv.step({a: act[i] if continuous else int(act[i]) for i, a in enumerate(names)})
        _, vrew, vterm, vtrunc, info = venv.step(torch.as_tensor(act)[None])
        ref = np.stack([obs[a] for a in names])
        obs_err = max(obs_err, np.abs(info["final_observation"][0].numpy() - ref).max())
        rew_err = max(rew_err, np.abs(vrew[0].numpy() - np.array([rew[a] for a in names])).max())
        assert vtrunc[0].tolist() == [trunc[a] for a in names]
        assert vterm[0].tolist() == [term[a] for a in names]
        collisions += float(info["collisions"][0])
    assert not penv.agents, "mpe2 episode did not end at max_cycles"
    return obs_err, rew_err, state_err, collisions


@pytest.mark.parametrize(("N", "local_ratio", "continuous", "dtype"), [
    (3, 0.5, False, "float32"), (3, 0.5, False, "float64"), (4, 0.25, False, "float32"),
    (3, 0.5, True, "float32"), (2, 1.0, True, "float64"),
])
def test_matches_mpe2_whole_episodes(N: int, local_ratio: float, continuous: bool, dtype: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mpe2 warns when it clips the out-of-range actions we send
        for seed, crowded in ((0, True), (1, False)):
            obs_err, rew_err, state_err, collisions = _play(N, local_ratio, continuous, dtype, seed, crowded)
            assert obs_err < 1e-5 and rew_err < 1e-5 and state_err < 1e-5, (obs_err, rew_err, state_err)
            if crowded:
                assert collisions > 0, "the crowded start must exercise collisions"


def test_terminate_on_success_matches_mpe2() -> None:
    penv = simple_spread_v3.parallel_env(terminate_on_success=True)
    penv.reset(seed=3)
    _, landmark_pos = _mpe2_world(penv)
    agent_pos = landmark_pos + np.array([[0.5, 0.0], [0.0, 0.5], [-0.5, 0.0]])
    _set_mpe2_world(penv, agent_pos, landmark_pos)
    venv = envs.make_vec("mpe/simple_spread-v3", num_envs=1, terminate_on_success=True)
    venv.set_world(agent_pos[None], landmark_pos[None])
    # Agent 0 moves left, agent 1 down, agent 2 right: all three reach their landmark.
    actions = [1, 3, 2]
    ended_at = None
    for step in range(25):
        _, rew, term, trunc, _ = penv.step({a: actions[i] for i, a in enumerate(penv.possible_agents)})
        _, vrew, vterm, vtrunc, info = venv.step(torch.tensor([actions]))
        assert np.allclose(vrew[0].numpy(), [rew[a] for a in penv.possible_agents], atol=1e-5)
        assert vterm[0].tolist() == [term[a] for a in penv.possible_agents]
        if any(term.values()):
            ended_at = step
            break
    assert ended_at is not None and ended_at < 24, "the scripted episode must terminate before the time limit"
    assert int(info["covered_landmarks"][0]) == 3 and bool(info["done"][0])


def test_batched_shapes_autoreset_and_seeding() -> None:
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=5, N=3, max_cycles=4)
    obs, _ = env.reset(seed=7)
    assert obs.shape == (5, 3, 18) and env.state().shape == (5, 54)
    assert torch.equal(env.state(), obs.reshape(5, -1))
    again = envs.make_vec("mpe/simple_spread-v3", num_envs=5, N=3, max_cycles=4)
    assert torch.equal(again.reset(seed=7)[0], obs)
    acts = torch.zeros(5, 3, dtype=torch.long)
    for _ in range(3):
        obs, rew, term, trunc, info = env.step(acts)
        assert rew.shape == term.shape == trunc.shape == (5, 3) and not trunc.any()
    # A copy with a longer time limit steps the same worlds without resetting them.
    longer = envs.make_vec("mpe/simple_spread-v3", num_envs=5, N=3, max_cycles=10)
    longer.load_state(env.get_state())
    expected_final = longer.step(acts)[0]
    obs, rew, term, trunc, info = env.step(acts)
    assert trunc.all() and not term.any() and info["done"].all()
    assert torch.equal(info["final_observation"], expected_final)
    assert torch.equal(info["final_state"], expected_final.reshape(5, -1))
    assert not torch.allclose(obs, expected_final), "finished environments must have been reset"
    assert (env.steps == 0).all() and torch.all(obs[..., :2] == 0), "a new episode starts at rest"


def test_checkpoint_state_restores_exactly() -> None:
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=3, max_cycles=5)
    env.reset(seed=1)
    gen = torch.Generator().manual_seed(0)
    acts = [torch.randint(0, 5, (3, 3), generator=gen) for _ in range(12)]
    for a in acts[:4]:
        env.step(a)
    saved = env.get_state()
    first = [env.step(a)[0] for a in acts[4:]]
    env.load_state(saved)
    second = [env.step(a)[0] for a in acts[4:]]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_bad_input_names_the_parameter() -> None:
    env = envs.make_vec("mpe/simple_spread-v3", num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="discrete actions"):
        env.step(torch.full((2, 3), 5))
    with pytest.raises(ValueError, match=r"shape \[B, N\]"):
        env.step(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="local_ratio"):
        envs.make_vec("mpe/simple_spread-v3", num_envs=2, local_ratio=1.5)
    with pytest.raises(ValueError, match="dtype"):
        envs.make_vec("mpe/simple_spread-v3", num_envs=2, dtype="float16")
