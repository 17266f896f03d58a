"""``swarm/flock-v0``: the swarm as a PettingZoo ParallelEnv for learned flocking policies.

Each agent sees its ``k`` nearest neighbours (periodic box) in its own frame: their
displacement rotated so that its heading points along +x, divided by half the box, and the
cosine and sine of their heading relative to its own. It chooses one of ``n_turns`` turns,
evenly spaced in [-max_turn, max_turn], then all agents move ``speed`` at once. The reward of
an agent is the alignment with its neighbours (mean cosine of the heading differences) minus
``cohesion`` times their mean distance in units of the box. Episodes are truncated after
``max_cycles`` steps; nothing terminates. ``state()`` gives the central critic every agent's
position (divided by the box) and heading (cosine, sine).

The env steps through the swarm engine's pieces: its observation is the
:class:`swarm.perception.KNearest` perception (scale half the box) and its turns are a
:class:`swarm.perception.Motion`, so a policy trained here reads and acts the same way in
:class:`swarm.SwarmModel` or :func:`swarm.simulate`, at any number of agents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.registry import register
from swarm.engine import initial_state
from swarm.perception import KNearest, Motion, Percept
from swarm.rule import check_range


class FlockEnv(ParallelEnv):
    """Flocking with a turn per agent per step.

    Args:
        n_agents: Number of agents, >= 2. Default 10.
        k: Neighbours each agent sees, in [1, n_agents - 1]. Default 4.
        box: Side of the periodic box. Default 10.
        speed: Distance moved per step. Default 0.1.
        max_turn: Largest turn per step, radians in (0, pi]. Default pi/4.
        n_turns: Number of discrete turns (odd, so that 0 is one). Default 5.
        cohesion: Weight of the mean neighbour distance in the reward. Default 0.5.
        max_cycles: Steps before truncation. Default 100.
    """

    metadata = {"name": "flock_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, n_agents: int = 10, k: int = 4, box: float = 10.0, speed: float = 0.1,
                 max_turn: float = np.pi / 4, n_turns: int = 5, cohesion: float = 0.5,
                 max_cycles: int = 100) -> None:
        self.n = int(check_range("n_agents", n_agents, 2, integer=True))
        self.k = int(check_range("k", k, 1, self.n - 1, integer=True))
        self.box = check_range("box", box, 0, lo_open=True)
        self.speed = check_range("speed", speed, 0)
        self.max_turn = check_range("max_turn", max_turn, 0, np.pi, lo_open=True)
        self.n_turns = int(check_range("n_turns", n_turns, 1, integer=True))
        if self.n_turns % 2 == 0:
            raise ValueError(f"n_turns must be an odd integer >= 1, got {n_turns}")
        self.cohesion = check_range("cohesion", cohesion, 0)
        self.max_cycles = int(check_range("max_cycles", max_cycles, 1, integer=True))
        self.turns = np.linspace(-self.max_turn, self.max_turn, self.n_turns) if self.n_turns > 1 else np.zeros(1)
        self.possible_agents = [f"agent_{i}" for i in range(self.n)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(-1.0, 1.0, (4 * self.k,), dtype=np.float32)
        self._act_space = spaces.Discrete(self.n_turns)
        self.state_space = spaces.Box(-1.0, 1.0, (4 * self.n,), dtype=np.float32)
        self.perception = KNearest(self.k, 0.5 * self.box)
        self.motion = Motion(self.speed, turns=tuple(float(t) for t in self.turns))
        self._rng = np.random.default_rng()
        self.positions = np.zeros((self.n, 2))
        self.directions = np.tile([1.0, 0.0], (self.n, 1))
        self.t = 0

    @property
    def angles(self) -> np.ndarray:
        """(N,) headings in radians, in (-pi, pi]."""
        return np.arctan2(self.directions[:, 1], self.directions[:, 0])

    @angles.setter
    def angles(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float64)
        self.directions = np.stack([np.cos(value), np.sin(value)], axis=1)

    def observation_space(self, agent: str) -> spaces.Box:
        """Box(-1, 1, (4k,)): rotated displacements, then cos and sin of relative headings."""
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Discrete:
        """Discrete(n_turns): index into the evenly spaced turns."""
        return self._act_space

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Uniform positions and headings from a generator seeded with ``seed``."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.positions, self.directions = initial_state(self.n, self.box, self._rng)
        self.agents = list(self.possible_agents)
        self.t = 0
        obs, _ = self._observe()
        return obs, {a: {} for a in self.agents}

    def _observe(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        nb = self.perception.neighbours(self.positions, self.directions, self.box)
        obs = self.perception.encode(nb)
        self._last_rewards = nb.cos.mean(1) - self.cohesion * nb.distances.mean(1) / self.box
        return {a: obs[i] for i, a in enumerate(self.possible_agents)}, obs

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Turns each agent by its chosen turn (agents without an action go straight), then moves all."""
        straight = self.n_turns // 2  # the middle turn is 0 (n_turns is odd)
        index = np.array([int(actions.get(a, straight)) for a in self.possible_agents])
        # The engine's motion: the same code that moves a swarm driven by this env's policies.
        new = self.motion.headings(Percept(None, self.directions), index)
        self.positions = self.motion.move(self.positions, self.directions, new, self.box)
        self.directions = new
        self.t += 1
        obs, _ = self._observe()
        rewards = {a: float(self._last_rewards[i]) for i, a in enumerate(self.possible_agents)}
        truncated = self.t >= self.max_cycles
        terms = {a: False for a in self.agents}
        truncs = {a: truncated for a in self.agents}
        infos = {a: {} for a in self.agents}
        if truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def state(self) -> np.ndarray:
        """Every agent's position / box and heading (cos, sin), flattened to (4N,)."""
        return np.concatenate([
            (self.positions / self.box).ravel(), np.cos(self.angles), np.sin(self.angles),
        ]).astype(np.float32)

    def render(self) -> None:
        """No rendering: the Solara app (swarm/app.py) draws swarms."""
        return None

    def close(self) -> None:
        """Nothing to release."""


class AlignPolicy:
    """A hand-written policy for ``swarm/flock-v0``: turn towards the neighbours' mean heading.

    Args:
        env: The FlockEnv whose ``k`` and turns it uses.
    """

    def __init__(self, env: FlockEnv) -> None:
        self.k = env.k
        self.turns = env.turns

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        """The turn index closest to the angle of the mean relative heading, per observation."""
        obs = np.asarray(observations, dtype=np.float64)
        cos, sin = obs[:, 2 * self.k:3 * self.k], obs[:, 3 * self.k:]
        target = np.arctan2(sin.mean(1), cos.mean(1))
        return np.abs(target[:, None] - self.turns[None, :]).argmin(1)


def flock_env(**kwargs: Any) -> FlockEnv:
    """Builds ``swarm/flock-v0``."""
    return FlockEnv(**kwargs)


register("swarm/flock-v0", flock_env,
         description="Flocking: k nearest neighbours in, a turn out, rewards for alignment and cohesion")
