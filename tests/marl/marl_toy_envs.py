"""Two tiny ParallelEnvs a user could write: agents that leave early, and mixed action spaces.

Importing this module registers ``toy/leave-v0`` and ``toy/mixed-v0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

import envs


class LeaveEnv(ParallelEnv):
    """Agent k leaves (terminates) after ``k + 2`` steps; the episode ends when all have left.

    Each step an agent sees a one-hot target among 3 and earns 1 for choosing it, else 0.
    """

    metadata = {"name": "leave_v0", "render_modes": []}

    def __init__(self, n: int = 3) -> None:
        self.possible_agents = [f"runner_{k}" for k in range(n)]
        self.lifetimes = {a: k + 2 for k, a in enumerate(self.possible_agents)}
        self.state_space = spaces.Box(0.0, 1.0, (3 * n,), np.float32)
        self._obs_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self._act_space = spaces.Discrete(3)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: np.eye(3, dtype=np.float32)[self.targets[a]] for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.targets = {a: int(self.rng.integers(3)) for a in self.agents}
        return self._obs(), {a: {} for a in self.agents}

    def state(self) -> np.ndarray:
        out = np.zeros(3 * len(self.possible_agents), dtype=np.float32)
        for k, a in enumerate(self.possible_agents):
            if a in self.agents:
                out[3 * k + self.targets[a]] = 1.0
        return out

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        assert set(actions) == set(self.agents), f"actions for {sorted(actions)}, agents {sorted(self.agents)}"
        self.t += 1
        rewards = {a: float(int(actions[a]) == self.targets[a]) for a in self.agents}
        terms = {a: self.t >= self.lifetimes[a] for a in self.agents}
        truncs = {a: False for a in self.agents}
        self.targets = {a: int(self.rng.integers(3)) for a in self.agents}
        obs = self._obs()
        infos = {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not terms[a]]
        return obs, rewards, terms, truncs, infos


class MixedEnv(ParallelEnv):
    """A Discrete ``picker_0`` and a Box ``mover_0`` (bounds [-2, 2]^2) for ``max_cycles`` steps.

    The picker earns 1 for naming the sign of its observation's first number; the mover earns
    ``-|a - target|`` for a target inside its bounds. Every action the mover sends is recorded.
    """

    metadata = {"name": "mixed_v0", "render_modes": []}

    def __init__(self, max_cycles: int = 8) -> None:
        self.possible_agents = ["picker_0", "mover_0"]
        self.max_cycles = max_cycles
        self.state_space = spaces.Box(-2.0, 2.0, (4,), np.float32)
        self.mover_actions: list[np.ndarray] = []
        self._obs_spaces = {"picker_0": spaces.Box(-2.0, 2.0, (1,), np.float32), "mover_0": spaces.Box(-2.0, 2.0, (2,), np.float32)}
        self._act_spaces = {"picker_0": spaces.Discrete(2), "mover_0": spaces.Box(-2.0, 2.0, (2,), np.float32)}

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_spaces[agent]

    def _draw(self) -> None:
        self.x = float(self.rng.uniform(-1, 1))
        self.target = self.rng.uniform(-1.5, 1.5, size=2).astype(np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"picker_0": np.array([self.x], dtype=np.float32), "mover_0": self.target.copy()}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self._draw()
        return self._obs(), {a: {} for a in self.agents}

    def state(self) -> np.ndarray:
        return np.array([self.x, *self.target, min(1.0, self.t / self.max_cycles)], dtype=np.float32)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        move = np.asarray(actions["mover_0"], dtype=np.float32)
        self.mover_actions.append(move)
        rewards = {"picker_0": float(int(actions["picker_0"]) == int(self.x > 0)),
                   "mover_0": -float(np.abs(move - self.target).sum())}
        self.t += 1
        self._draw()
        done = self.t >= self.max_cycles
        terms = {a: False for a in self.agents}
        truncs = {a: done for a in self.agents}
        obs, infos = self._obs(), {a: {} for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terms, truncs, infos


if "toy/leave-v0" not in envs.registered():
    envs.register("toy/leave-v0", LeaveEnv, description="agents that leave at steps 2, 3, 4")
    envs.register("toy/mixed-v0", MixedEnv, description="a Discrete and a Box agent")
