"""Smaller image observations: grayscale and k x k block averages, as Atari-style preprocessing does.

A policy that reads the screen needs positions, not every pixel and colour. cooperative_pong's
screen at ``render_ratio=4`` is 140x240x3 (100,800 values in the state, 50,400 in each paddle's
observation); its grayscale 3x3 block average is 46x80x1, 27 times fewer. Done in the
environment, it is paid once per step where the environment runs (the env worker processes
of :class:`marl.parallel_batch.ParallelBatch`), and everything after it (the transfer to the
trainer, the rollout buffer, every epoch's encoder pass) handles the small image.

:func:`envs.registry.make` applies it for the keyword arguments ``image_pool`` and
``grayscale``, to any registered ParallelEnv, so a run's ``env_kwargs`` (which a saved policy
keeps) rebuild the same observations in ``agora play`` and ``agora eval``.

Which arrays are images: an observation space or state space of shape ``(H, W, C)`` with
``C <= 4`` and ``H, W >= 8``; other observations pass unchanged. ``uint8`` images stay
``uint8``: the result is rounded to the nearest integer (halves up), computed exactly in
integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.wrappers import BaseParallelWrapper

# ITU-R BT.601 luma weights in thousandths (integers: uint8 images are reduced exactly).
LUMA = np.array([299, 587, 114], dtype=np.int64)
MAX_POOL = 64


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """(H, W, C) with C <= 4 and H, W >= 8: an image here and to MAPPO's CNN encoders (``encoder=auto``)."""
    return len(shape) == 3 and shape[2] <= 4 and min(shape[0], shape[1]) >= 8


def reduce_image(image: np.ndarray, pool: int = 1, grayscale: bool = False) -> np.ndarray:
    """``image`` (H, W, C) as its grayscale (C = 3 only) ``pool x pool`` block average.

    Rows and columns past the last whole block are dropped (as ``AvgPool2d`` does). Integer
    images are reduced exactly and rounded to the nearest integer, halves up; float images
    in float64, returned in their own dtype.

    Args:
        image: An (H, W, C) array.
        pool: Block side, 1 (none) or more.
        grayscale: Replace the three colour channels by their luma (0.299 R + 0.587 G + 0.114 B).
    """
    h, w, c = image.shape
    hh, ww = h // pool, w // pool
    integer = np.issubdtype(image.dtype, np.integer)
    # int32 holds any uint8 block sum: 255 * 1000 * 64 * 64 < 2**31; wider integers use int64.
    wide = np.int32 if image.dtype.itemsize == 1 else np.int64
    x = image[: hh * pool, : ww * pool].astype(wide if integer else np.float64)
    weight = 1
    if grayscale and c == 3:
        lum = LUMA.astype(x.dtype) if integer else LUMA / 1000.0
        x = (x[..., 0] * lum[0] + x[..., 1] * lum[1] + x[..., 2] * lum[2])[..., None]
        weight = 1000 if integer else 1
    # Sum each pool x pool block: (hh, pool, ww, pool, C) summed over the two block axes.
    x = x.reshape(hh, pool, ww, pool, x.shape[-1]).sum(axis=(1, 3))
    div = weight * pool * pool
    if integer:
        return ((2 * x + div) // (2 * div)).astype(image.dtype)
    return (x / div).astype(image.dtype)


def _reduced_space(space: spaces.Box, pool: int, grayscale: bool) -> spaces.Box:
    # The reduction is an average with non-negative weights: it keeps each value between the
    # reductions of the bounds.
    low = reduce_image(np.broadcast_to(space.low, space.shape).astype(space.dtype), pool, grayscale)
    high = reduce_image(np.broadcast_to(space.high, space.shape).astype(space.dtype), pool, grayscale)
    return spaces.Box(low=low, high=high, dtype=space.dtype)


class ImagePreprocess(BaseParallelWrapper):
    """A ParallelEnv whose image observations and state are grayscale and/or block-averaged.

    Args:
        env: The ParallelEnv.
        image_pool: Block side of the average, 1..64 (1: none), at most the smaller side of
            each image.
        grayscale: Luma instead of RGB (three-channel images only).

    Raises:
        ValueError: A bad option, or an environment without an image observation.
    """

    @staticmethod
    def check_options(image_pool: int = 1, grayscale: bool = False) -> None:
        """Raises ValueError naming the option when ``image_pool`` or ``grayscale`` is not allowed."""
        if isinstance(image_pool, bool) or not isinstance(image_pool, (int, np.integer)) or not 1 <= image_pool <= MAX_POOL:
            raise ValueError(f"image_pool must be an integer in [1, {MAX_POOL}], got {image_pool!r}")
        if not isinstance(grayscale, bool):
            raise ValueError(f"grayscale must be true or false, got {grayscale!r}")

    def __init__(self, env: Any, image_pool: int = 1, grayscale: bool = False) -> None:
        self.check_options(image_pool, grayscale)
        super().__init__(env)
        self.image_pool, self.grayscale = int(image_pool), grayscale
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # the last screen reduced, and its reduction
        self._obs_spaces: dict[Any, spaces.Space] = {}
        self._images: set[Any] = set()
        for agent in env.possible_agents:
            space = env.observation_space(agent)
            if isinstance(space, spaces.Box) and is_image_shape(space.shape):
                self._check(space.shape, f"agent {agent!r}'s observation")
                self._images.add(agent)
                self._obs_spaces[agent] = _reduced_space(space, self.image_pool, grayscale)
            else:
                self._obs_spaces[agent] = space
        state_space = getattr(env, "state_space", None)
        self._state_image = isinstance(state_space, spaces.Box) and is_image_shape(state_space.shape)
        if self._state_image:
            self._check(state_space.shape, "the state")
            self.state_space = _reduced_space(state_space, self.image_pool, grayscale)
        elif state_space is not None:
            self.state_space = state_space
        if not self._images and not self._state_image:
            raise ValueError("image_pool/grayscale: the environment has no image observation or state "
                             "((H, W, C) with C <= 4 and H, W >= 8)")

    def _check(self, shape: tuple[int, ...], what: str) -> None:
        if self.image_pool > min(shape[0], shape[1]):
            raise ValueError(f"image_pool must be at most {min(shape[0], shape[1])}, the smaller side of {what} "
                             f"{tuple(shape)}, got {self.image_pool}")

    def _reduce(self, raw: Any) -> np.ndarray:
        # Agents often see one screen, and state() is that screen again (cooperative_pong: three
        # equal arrays a step): an equal array reuses the last reduction, which costs a comparison
        # instead of a reduction. The screen is kept as a copy, so an env that draws into the same
        # buffer next step does not look equal to it.
        raw = np.asarray(raw)
        last = self._last
        if last is not None and last[0].shape == raw.shape and last[0].dtype == raw.dtype and np.array_equal(last[0], raw):
            return last[1].copy()
        out = reduce_image(raw, self.image_pool, self.grayscale)
        self._last = (raw.copy(), out)
        return out.copy()

    def _obs(self, obs: dict[Any, Any]) -> dict[Any, Any]:
        return {a: self._reduce(o) if a in self._images else o for a, o in obs.items()}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._obs(obs), infos

    def step(self, actions: dict[Any, Any]) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        return self._obs(obs), rewards, terminated, truncated, infos

    def state(self) -> np.ndarray:
        s = self.env.state()
        return self._reduce(s) if self._state_image else s

    def observation_space(self, agent: Any) -> spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: Any) -> spaces.Space:
        return self.env.action_space(agent)
