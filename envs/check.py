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


def check_trainable(env: Any) -> None:
    """Checks that MAPPO (``marl``) can act in ``env``: what PettingZoo's tests accept but it cannot.

    Every agent's observation space must be a ``Box`` (any shape; images are read by a CNN)
    and its action space ``Discrete`` (starting at 0) or ``Box``; mixed across agents is fine,
    and so are agents that leave before the episode ends (the trainer masks them).

    Raises:
        EnvCheckError: naming the agent and its space.
    """
    from gymnasium import spaces

    for agent in env.possible_agents:
        obs, act = env.observation_space(agent), env.action_space(agent)
        if not isinstance(obs, spaces.Box):
            raise EnvCheckError(f"agent {agent!r}: observation space {obs} is not a Box; MAPPO reads Box observations "
                                "(flatten Dict/Tuple observations in a wrapper)")
        if isinstance(act, spaces.Discrete):
            if int(act.start) != 0:
                raise EnvCheckError(f"agent {agent!r}: Discrete action space starts at {act.start}; MAPPO needs start 0")
        elif not isinstance(act, spaces.Box):
            raise EnvCheckError(f"agent {agent!r}: action space {type(act).__name__} {act} is neither Discrete nor Box, "
                                "the spaces MAPPO acts in")


def check_env(
    env: Any,
    *,
    env_fn: Callable[[], Any] | None = None,
    num_cycles: int = 50,
) -> None:
    """Runs PettingZoo's ``parallel_api_test`` and ``parallel_seed_test``, the state check, and
    :func:`check_trainable` (so an env that passes is one MAPPO trains on).

    Args:
        env: A fresh (not yet reset) ParallelEnv.
        env_fn: Builds a fresh copy for the seed test. Default: deep copies of ``env``.
        num_cycles: Steps each PettingZoo test runs. Default 50.

    Raises:
        EnvCheckError: (an AssertionError) naming the broken part of the contract.
    """
    from pettingzoo.test import parallel_api_test, parallel_seed_test

    check_trainable(env)
    template = copy.deepcopy(env)
    factory = env_fn or (lambda: copy.deepcopy(template))
    parallel_api_test(env, num_cycles=num_cycles)
    parallel_seed_test(factory, num_cycles=num_cycles)
    check_state(factory())
