"""A thin adapter: B copies of any registered PettingZoo ParallelEnv behind the batched API.

MAPPO trains on :class:`envs.vec_spread.VecSimpleSpread` and on this adapter alike: both
return observations [B, N, obs_dim], rewards/terminated/truncated [B, N], ``state()`` [B, S],
and reset finished environments automatically with the last observation and state kept in
``infos``. Agents with smaller observations are zero-padded to the largest; their action
sizes are reported in :attr:`ParallelBatch.action_sizes` so a policy can mask the rest.

Every episode starts from ``reset(seed=s)`` with ``s`` drawn from the adapter's own numpy
generator, and the actions since that reset are remembered, so :meth:`get_state` /
:meth:`load_state` restore any deterministic environment exactly by replaying them (mpe2's
environments do not pickle their mid-episode state).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.registry import make


class ParallelBatch:
    """``num_envs`` instances of ``env_id`` stepped one after another.

    Args:
        env_id: A registered environment id (``envs.make``).
        num_envs: Number of copies B.
        seed: Seed of the generator that draws every episode's reset seed. Default 0.
        device: Torch device of the returned tensors. Default "cpu".
        **env_kwargs: Keyword arguments of ``envs.make``.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int = 0, device: str | torch.device = "cpu", **env_kwargs: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.envs = [make(env_id, **env_kwargs) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.device = torch.device(device)
        first = self.envs[0]
        self.possible_agents = list(first.possible_agents)
        self.num_agents = len(self.possible_agents)
        obs_spaces = [first.observation_space(a) for a in self.possible_agents]
        act_spaces = [first.action_space(a) for a in self.possible_agents]
        kinds = {type(s) for s in act_spaces}
        if kinds == {spaces.Discrete}:
            self.continuous_actions = False
            self.action_sizes = [int(s.n) for s in act_spaces]
        elif kinds == {spaces.Box}:
            self.continuous_actions = True
            self.action_sizes = [int(np.prod(s.shape)) for s in act_spaces]
        else:
            raise ValueError(f"{env_id}: action spaces must be all Discrete or all Box, got {sorted(k.__name__ for k in kinds)}")
        self._act_spaces = act_spaces
        self.obs_sizes = [int(np.prod(s.shape)) for s in obs_spaces]
        self.obs_dim = max(self.obs_sizes)
        self.act_dim = max(self.action_sizes)
        self.state_dim = int(np.prod(first.state_space.shape)) if hasattr(first, "state_space") else self.obs_dim * self.num_agents
        self._rng = np.random.default_rng(seed)
        self._episode_seed = [0] * num_envs
        self._history: list[list[dict[str, Any]]] = [[] for _ in range(num_envs)]
        self._obs = np.zeros((num_envs, self.num_agents, self.obs_dim), dtype=np.float32)

    def observation_space(self, agent: str | None = None) -> spaces.Box:
        """The padded observation space shared by every agent."""
        return spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    def action_space(self, agent: str | None = None) -> spaces.Space:
        """The action space of ``agent`` (default the first agent)."""
        return self._act_spaces[self.possible_agents.index(agent) if agent else 0]

    # Reset and step --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Resets every copy; ``seed`` reseeds the adapter's generator first."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        for i in range(self.num_envs):
            self._reset_one(i)
        return self._tensor(self._obs), {}

    def _reset_one(self, i: int) -> None:
        self._episode_seed[i] = int(self._rng.integers(2**31 - 1))
        self._history[i] = []
        obs, _ = self.envs[i].reset(seed=self._episode_seed[i])
        self._obs[i] = self._pack(obs)

    def _pack(self, obs: dict[str, Any]) -> np.ndarray:
        out = np.zeros((self.num_agents, self.obs_dim), dtype=np.float32)
        for k, a in enumerate(self.possible_agents):
            if a in obs:
                flat = np.asarray(obs[a], dtype=np.float32).ravel()
                out[k, : flat.size] = flat
        return out

    def _actions(self, row: np.ndarray) -> dict[str, Any]:
        if self.continuous_actions:
            return {a: row[k, : self.action_sizes[k]].astype(np.float32) for k, a in enumerate(self.possible_agents)}
        return {a: int(row[k]) for k, a in enumerate(self.possible_agents)}

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Steps every copy with ``actions`` ([B, N] or [B, N, act_dim]); resets finished ones.

        Returns:
            observations, rewards, terminated, truncated (as the batched environment) and
            infos with ``final_observation``, ``final_state`` and ``done``. A copy is done when
            its agent list is empty; every agent of it must finish at the same step.
        """
        acts = torch.as_tensor(actions).detach().cpu().numpy()
        b, n = self.num_envs, self.num_agents
        rew = np.zeros((b, n), dtype=np.float32)
        term = np.zeros((b, n), dtype=bool)
        trunc = np.zeros((b, n), dtype=bool)
        final_obs = np.zeros((b, n, self.obs_dim), dtype=np.float32)
        final_state = np.zeros((b, self.state_dim), dtype=np.float32)
        done = np.zeros(b, dtype=bool)
        for i, env in enumerate(self.envs):
            action = self._actions(acts[i])
            self._history[i].append(action)
            obs, r, te, tr, _ = env.step(action)
            for k, a in enumerate(self.possible_agents):
                rew[i, k] = r.get(a, 0.0)
                term[i, k] = te.get(a, False)
                trunc[i, k] = tr.get(a, False)
            final_obs[i] = self._pack(obs)
            final_state[i] = self._state_of(env, final_obs[i])
            if env.agents and len(env.agents) != n:
                raise ValueError(f"ParallelBatch needs every agent to finish at the same step; {sorted(set(self.possible_agents) - set(env.agents))} left early")
            done[i] = not env.agents
            if done[i]:
                self._reset_one(i)
            else:
                self._obs[i] = final_obs[i]
        infos = {"final_observation": self._tensor(final_obs), "final_state": self._tensor(final_state), "done": torch.as_tensor(done, device=self.device)}
        t = torch.as_tensor
        return self._tensor(self._obs), self._tensor(rew), t(term, device=self.device), t(trunc, device=self.device), infos

    def _state_of(self, env: Any, packed_obs: np.ndarray) -> np.ndarray:
        # An env that declares a state_space implements state(); otherwise the agents'
        # observations together stand in for the global state.
        if hasattr(env, "state_space"):
            return np.asarray(env.state(), dtype=np.float32).ravel()
        return packed_obs.ravel()

    def state(self) -> torch.Tensor:
        """The global state of every copy, [B, state_dim] (``env.state()``)."""
        return self._tensor(np.stack([self._state_of(env, self._obs[i]) for i, env in enumerate(self.envs)]))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array.copy(), device=self.device)

    # Checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The generator, each copy's episode seed and the actions taken since its reset."""
        return {"rng": self._rng.bit_generator.state, "episode_seed": list(self._episode_seed), "history": [list(h) for h in self._history]}

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`get_state` by resetting each copy with its seed and replaying its actions."""
        self._rng.bit_generator.state = saved["rng"]
        for i, env in enumerate(self.envs):
            self._episode_seed[i] = saved["episode_seed"][i]
            self._history[i] = list(saved["history"][i])
            obs, _ = env.reset(seed=self._episode_seed[i])
            for action in self._history[i]:
                obs, *_ = env.step(action)
            self._obs[i] = self._pack(obs)

    def close(self) -> None:
        """Closes every copy."""
        for env in self.envs:
            env.close()
