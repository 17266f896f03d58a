"""A policy trained by MAPPO on ``swarm/flock-v0``, as a swarm policy at any number of agents.

MAPPO saves its actor with what rebuilds it (:func:`marl.load_policy`). Trained with
``agent_id: false``, the shared actor reads one agent's observation and nothing else, so its
agent (an :class:`envs.Agent` acting through a :class:`marl.policy.GroupPolicy`) acts for a
batch of any size: this wrapper hands it every row of the swarm's batch. The
environment's keyword arguments in ``policy.json`` give the perception it was trained on
(:class:`swarm.perception.KNearest`: the same k, the same length scale) and its turns
(:class:`swarm.perception.Motion`), so ``SwarmModel(load_learned(run_dir), 10_000)`` runs it
at the training density, in a box 1,000 times the size of the training one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarm.env import FlockEnv

ENV_ID = "swarm/flock-v0"


class LearnedPolicy:
    """A trained flock-v0 actor: (M, 4k) observations in, (M,) turn indices out, for any M.

    Args:
        saved: A :class:`marl.policy.SavedPolicy` of a MAPPO run on ``swarm/flock-v0`` trained
            with ``share_params: true`` and ``agent_id: false`` (greedy or sampling, as loaded).

    Raises:
        ValueError: for a policy of another environment, or one tied to its training N.
    """

    name = "learned"

    def __init__(self, saved: Any) -> None:
        meta = saved.meta
        if saved.env_id != ENV_ID:
            raise ValueError(f"a learned swarm policy must be trained on {ENV_ID}, this one was trained on {saved.env_id!r}")
        groups = saved.actor.groups
        actor = saved.actor.actors[0]
        if len(groups) != 1 or not meta.get("share_params", False):
            raise ValueError("a learned swarm policy must be one actor shared by all agents (train.share_params: true)")
        if actor.in_features != actor.obs_dim:
            raise ValueError(f"this actor reads a one-hot id of its {actor.num_agents} training agents, so it acts "
                             f"for exactly that many; train with train.agent_id: false to run it at any N")
        env = FlockEnv(**dict(meta.get("env_kwargs") or {}))
        self.agent = saved.group_agents[0]  # the one group's agent: its policy is the shared actor
        self.obs_dim = actor.obs_dim
        self.perception = env.perception
        self.motion = env.motion
        self.default_density = env.n / env.box**2  # the density it was trained at
        self.meta = meta

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        """Turn indices of a batch of observations, one per row."""
        obs = torch.as_tensor(np.asarray(observations, dtype=np.float32))
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observations must be (M, {self.obs_dim}), got {tuple(obs.shape)}")
        return self.agent.act(obs).numpy()


def load_learned(run_dir: str | Path, *, greedy: bool = True, seed: int = 0) -> LearnedPolicy:
    """The flock-v0 policy a MAPPO run saved (a run directory or a policy directory), as a swarm policy.

    Its ``perception``, ``motion`` and ``default_density`` are the training environment's, so
    ``swarm.SwarmModel(load_learned(run_dir), n_agents)`` needs nothing else.
    """
    from marl.policy import load_policy

    return LearnedPolicy(load_policy(run_dir, greedy=greedy, seed=seed))


class RandomTurns:
    """Uniformly random turn indices, the baseline a learned flock is compared with.

    Args:
        n_turns: Number of turns.
        seed: Seed of its own generator.
    """

    name = "random"

    def __init__(self, n_turns: int, seed: int | np.random.SeedSequence | None = None) -> None:
        self.n_turns = n_turns
        self.rng = np.random.default_rng(seed)

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return self.rng.integers(self.n_turns, size=len(observations))
