"""Image preprocessing (``image_pool``, ``grayscale``): exact against plain arithmetic, torch's
``avg_pool2d`` and the unwrapped environment; saved policies rebuild it; bad options are named."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

import envs
from envs.image import ImagePreprocess, reduce_image
from envs.registry import make, register
from marl import load_policy
from marl.evaluate import evaluate
from marl.mappo import MAPPO, MAPPOConfig, make_batched_env

pytest.importorskip("pygame")

PONG = "butterfly/cooperative_pong-v6"


def _reference(image: np.ndarray, pool: int, gray: bool) -> np.ndarray:
    """Block averages with exact fractions, rounded half up: one block at a time, no numpy arithmetic."""
    h, w, c = image.shape
    rows, cols = h // pool, w // pool
    weights = [Fraction(299, 1000), Fraction(587, 1000), Fraction(114, 1000)]
    chans = 1 if gray else c
    out = np.zeros((rows, cols, chans), dtype=image.dtype)
    for i in range(rows):
        for j in range(cols):
            for k in range(chans):
                total = Fraction(0)
                for y in range(i * pool, (i + 1) * pool):
                    for x in range(j * pool, (j + 1) * pool):
                        px = [int(v) for v in image[y, x]]
                        total += sum(wt * v for wt, v in zip(weights, px, strict=True)) if gray else px[k]
                mean = total / (pool * pool)
                out[i, j, k] = int(mean + Fraction(1, 2)) if mean.denominator != 1 else int(mean)
    return out


@pytest.mark.parametrize(("pool", "gray"), [(1, True), (2, False), (3, True), (4, True), (5, False)])
def test_uint8_images_reduce_exactly(pool: int, gray: bool) -> None:
    image = np.random.default_rng(pool).integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    got = reduce_image(image, pool, gray)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _reference(image, pool, gray))


def test_a_half_rounds_up_and_white_stays_white() -> None:
    image = np.zeros((2, 2, 1), dtype=np.uint8)
    image[0, 0] = 2  # block mean 0.5
    assert reduce_image(image, 2)[0, 0, 0] == 1
    white = np.full((6, 6, 3), 255, dtype=np.uint8)
    np.testing.assert_array_equal(reduce_image(white, 3, True), np.full((2, 2, 1), 255, dtype=np.uint8))


def test_float_images_match_torch_avg_pool2d() -> None:
    image = np.random.default_rng(0).random((17, 10, 3)).astype(np.float32)
    luma = torch.tensor(image, dtype=torch.float64) @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    expected = torch.nn.functional.avg_pool2d(luma[None, None], 3)[0, 0].numpy()[..., None]
    got = reduce_image(image, 3, True)
    assert got.dtype == np.float32 and got.shape == (5, 3, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    per_channel = torch.nn.functional.avg_pool2d(torch.tensor(image).permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(reduce_image(image, 2), per_channel, rtol=1e-6)


def test_pong_through_the_registry_equals_the_reduced_unwrapped_game() -> None:
    wrapped = make(PONG, render_ratio=8, max_cycles=30, image_pool=2, grayscale=True)
    plain = make(PONG, render_ratio=8, max_cycles=30)
    try:
        assert isinstance(wrapped, ImagePreprocess)
        for agent in wrapped.possible_agents:
            space = wrapped.observation_space(agent)
            assert space.shape == (35, 60, 1) and space.dtype == np.uint8
        assert wrapped.state_space.shape == (35, 60, 1)
        obs, _ = wrapped.reset(seed=4)
        ref, _ = plain.reset(seed=4)
        for step in range(12):
            for agent in plain.agents:
                np.testing.assert_array_equal(obs[agent], reduce_image(ref[agent], 2, True), err_msg=f"step {step}")
                assert wrapped.observation_space(agent).contains(obs[agent])
            np.testing.assert_array_equal(wrapped.state(), reduce_image(plain.state(), 2, True))
            assert obs["paddle_0"].max() > 0  # the drawn screen, not a black one
            actions = {"paddle_0": step % 3, "paddle_1": (step + 1) % 3}
            obs, rewards, *_ = wrapped.step(actions)
            ref, ref_rewards, *_ = plain.step(actions)
            assert rewards == ref_rewards
            if not plain.agents:  # the ball left: the episode is over
                obs, _ = wrapped.reset(seed=step)
                ref, _ = plain.reset(seed=step)
        np.testing.assert_array_equal(wrapped.render(), plain.render())  # the full screen for GIFs
    finally:
        wrapped.close()
        plain.close()
    parallel_api_test(make(PONG, render_ratio=8, max_cycles=30, image_pool=3), num_cycles=20)


@pytest.mark.parametrize(("options", "message"), [
    ({"image_pool": 0}, "image_pool must be an integer in [1, 64], got 0"),
    ({"image_pool": 65}, "image_pool must be an integer in [1, 64], got 65"),
    ({"image_pool": "3"}, "image_pool must be an integer in [1, 64], got '3'"),
    ({"image_pool": True}, "image_pool must be an integer in [1, 64], got True"),
    ({"grayscale": "yes"}, "grayscale must be true or false, got 'yes'"),
])
def test_bad_options_are_named_before_the_environment_is_built(options: dict, message: str) -> None:
    built = []
    register("test/image_probe-v0", lambda **kw: built.append(kw))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make("test/image_probe-v0", **options)
    assert built == []


def test_an_image_option_on_an_env_without_images_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no image observation"):
        make("mpe/simple_spread-v3", image_pool=2)
    with pytest.raises(ValueError, match=r"image_pool must be at most 35, the smaller side of agent 'paddle_0'"):
        make(PONG, render_ratio=16, image_pool=40)


def test_mappo_trains_on_reduced_screens_and_the_saved_policy_rebuilds_them(tmp_path: Path) -> None:
    kwargs = {"render_ratio": 8, "max_cycles": 12, "image_pool": 2, "grayscale": True}
    cfg = MAPPOConfig(env=PONG, env_kwargs=kwargs, backend="parallel", num_envs=2, rollout_steps=8, total_steps=32,
                      num_minibatches=1, update_epochs=1, env_workers=1)
    trainer = MAPPO(cfg, seed=0)
    try:
        assert trainer.obs_dim == 35 * 60 and trainer.state_dim == 35 * 60
        for _ in range(trainer.num_updates):
            trainer.train_iteration()
        trainer.save_policy(tmp_path / "policy")
    finally:
        trainer.env.close()
    env = make_batched_env(cfg.model_copy(update={"env_workers": 0}), 3, 50)
    try:
        expected = evaluate(trainer.greedy_policy, env, seed=50)
        assert evaluate(load_policy(tmp_path / "policy"), env, seed=50) == expected
    finally:
        env.close()
    assert envs.make(PONG, **kwargs).observation_space("paddle_0").shape == (35, 60, 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ("{image_pool: 0}", "train.env_kwargs.image_pool: image_pool must be an integer in [1, 64], got 0"),
    ("{grayscale: 1}", "train.env_kwargs.grayscale: grayscale must be true or false, got 1"),
    ("{image_pool: 40, render_ratio: 16}", "image_pool must be at most 35"),
])
def test_a_bad_image_option_exits_2_before_the_run_directory_exists(kwargs: str, message: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from experiments.cli import main as cli

    out = tmp_path / "run"
    code = cli(["run", "mappo_spread", "--out", str(out), f"train.env={PONG}", "train.backend=parallel",
                "baselines=[random]", f"train.env_kwargs={kwargs}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()
