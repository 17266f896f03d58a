"""The batched simple_spread's landmark placement range (a federated site's own worlds)."""

from __future__ import annotations

import pytest
import torch

import envs

ENV = "mpe/simple_spread-v3"


def test_default_range_is_mpe2_placement_bit_for_bit() -> None:
    plain = envs.make_vec(ENV, num_envs=16, seed=3)
    ranged = envs.make_vec(ENV, num_envs=16, seed=3, landmark_range=(-1.0, 1.0))
    plain.reset(seed=5)
    ranged.reset(seed=5)
    assert torch.equal(plain.landmark_pos, ranged.landmark_pos)
    assert torch.equal(plain.agent_pos, ranged.agent_pos)


def test_range_moves_the_landmarks_only() -> None:
    # Reference: the default draws of the same seed, mapped by hand from [-1, 1] to [0.5, 2.5].
    ref = envs.make_vec(ENV, num_envs=64, seed=1)
    env = envs.make_vec(ENV, num_envs=64, seed=1, landmark_range=[0.5, 2.5])
    ref.reset(seed=9)
    obs, _ = env.reset(seed=9)
    assert torch.equal(env.agent_pos, ref.agent_pos)
    torch.testing.assert_close(env.landmark_pos, ref.landmark_pos * 1.0 + 1.5, rtol=0, atol=1e-6)
    assert env.landmark_pos.min() >= 0.5 and env.landmark_pos.max() <= 2.5
    # The observation's landmark part is landmark - own position, as everywhere else.
    rel = (env.landmark_pos.unsqueeze(1) - env.agent_pos.unsqueeze(2)).reshape(64, 3, -1)
    torch.testing.assert_close(obs[:, :, 4:10], rel)


def test_per_world_ranges_for_a_union_of_sites() -> None:
    env = envs.make_vec(ENV, num_envs=8, seed=0)
    env.landmark_mid = torch.tensor([-1.0] * 4 + [1.0] * 4).reshape(8, 1, 1)
    env.landmark_half = torch.ones(8, 1, 1)
    env.reset(seed=2)
    assert env.landmark_pos[:4].max() <= 0.0 and env.landmark_pos[4:].min() >= 0.0
    # Worlds reset as they finish keep drawing from their own range.
    for _ in range(25):
        env.step(torch.zeros(8, 3, dtype=torch.long))
    assert int(env.steps.max()) == 0
    assert env.landmark_pos[:4].max() <= 0.0 and env.landmark_pos[4:].min() >= 0.0


@pytest.mark.parametrize("bad", [(1.0, 1.0), (2.0, -1.0), (float("nan"), 1.0), (0.0, float("inf")), (0.0,), 2.0])
def test_bad_range_names_the_argument(bad) -> None:
    with pytest.raises(ValueError, match="landmark_range"):
        envs.make_vec(ENV, num_envs=2, landmark_range=bad)
