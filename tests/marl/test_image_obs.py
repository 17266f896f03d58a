"""Image observations reach the trainer: cooperative_pong's screens show the ball and the paddles.

PettingZoo's cooperative_pong draws its screen only inside ``render()``, and ``render()`` draws
nothing without a render mode; the registry therefore builds it with ``render_mode="rgb_array"``
unless the caller says otherwise. Before that, every observation was black and MAPPO could
not learn. The references here are the game's own rectangles: the lit pixels must be exactly
the ball and the paddles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from marl.mappo import MAPPOConfig, make_batched_env

pytest.importorskip("pygame")

PONG = "butterfly/cooperative_pong-v6"


def _drawn(game: object) -> np.ndarray:
    """The screen [H, W] the game's ball and paddle rectangles should light, from its own state."""
    area = game.area
    lit = np.zeros((area.height, area.width), dtype=bool)
    for rect in [game.ball._rect, *game.p0.rects, *game.p1.rects]:
        r = rect.clip(area)
        lit[r.top:r.bottom, r.left:r.right] = True
    return lit


def test_pong_observations_and_state_are_the_drawn_screen() -> None:
    env = envs.make(PONG, render_ratio=8, max_cycles=20)
    try:
        obs, _ = env.reset(seed=3)
        game = env.unwrapped.env
        for step in range(3):
            expected = _drawn(game)
            # The ball (2x2 at render_ratio 8) and both paddles, nothing else.
            assert expected.sum() > 4
            for agent in ("paddle_0", "paddle_1"):
                assert obs[agent].shape == (70, 120, 3)
                np.testing.assert_array_equal(obs[agent].max(-1) > 0, expected, err_msg=f"{agent} at step {step}")
                # Lit pixels are white: every channel 255.
                assert set(np.unique(obs[agent][expected])) == {255}
            np.testing.assert_array_equal(env.state(), obs["paddle_0"])
            obs, *_ = env.step({"paddle_0": 1, "paddle_1": 2})
    finally:
        env.close()


def test_a_render_mode_the_caller_passes_wins() -> None:
    assert envs.make(PONG, render_ratio=8).unwrapped.render_mode == "rgb_array"
    env = envs.make(PONG, render_ratio=8, render_mode=None)
    assert env.unwrapped.render_mode is None
    env.close()


def test_the_trainer_batch_holds_the_screens() -> None:
    cfg = MAPPOConfig(env=PONG, env_kwargs={"render_ratio": 8, "max_cycles": 20}, backend="parallel", num_envs=2,
                      num_minibatches=1)
    batch = make_batched_env(cfg, 2, seed=5)
    try:
        obs, _ = batch.reset(seed=5)
        state = batch.state()
        for b, game in enumerate(e.unwrapped.env for e in batch.envs):
            expected = torch.from_numpy(np.repeat(_drawn(game)[..., None], 3, -1).astype(np.float32) * 255).flatten()
            for agent in range(2):
                torch.testing.assert_close(obs[b, agent], expected, rtol=0, atol=0)
            torch.testing.assert_close(state[b], expected, rtol=0, atol=0)
    finally:
        batch.close()
