"""Conformance check for Agora environments: PettingZoo's own tests plus the ``state()`` contract."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np


class EnvCheckError(AssertionError):
    """An environment broke the Agora environment contract."""


def check_state(env: Any, *, seed: int = 0, steps: int = 5) -> None:
    """Checks that ``env.state()`` exists and lies in ``env.state_space`` after reset and steps."""
    for attr in ("state", "state_space"):
        if not hasattr(env, attr):
            raise EnvCheckError(f"{type(env).__name__} has no {attr!r}: a central critic needs it")
    env.reset(seed=seed)
    for space in [env.action_space(a) for a in env.possible_agents]:
        space.seed(seed)
    for t in range(steps + 1):
        state = np.asarray(env.state())
        space = env.state_space
        if state.shape != space.shape:
            raise EnvCheckError(f"state() has shape {state.shape}, state_space has {space.shape} (step {t})")
        if not space.contains(state.astype(space.dtype)):
            raise EnvCheckError(f"state() at step {t} lies outside state_space {space}")
        if not env.agents:
            break
        env.step({a: env.action_space(a).sample() for a in env.agents})


def check_env(
    env: Any,
    *,
    env_fn: Callable[[], Any] | None = None,
    num_cycles: int = 50,
) -> None:
    """Runs PettingZoo's ``parallel_api_test`` and ``parallel_seed_test`` and the state check.

    Args:
        env: A fresh (not yet reset) ParallelEnv.
        env_fn: Builds a fresh copy for the seed test. Default: deep copies of ``env``.
        num_cycles: Steps each PettingZoo test runs. Default 50.

    Raises:
        EnvCheckError: (an AssertionError) naming the broken part of the contract.
    """
    from pettingzoo.test import parallel_api_test, parallel_seed_test

    template = copy.deepcopy(env)
    factory = env_fn or (lambda: copy.deepcopy(template))
    parallel_api_test(env, num_cycles=num_cycles)
    parallel_seed_test(factory, num_cycles=num_cycles)
    check_state(factory())
