"""A thin adapter: B copies of any registered PettingZoo ParallelEnv behind the batched API.

MAPPO trains on :class:`envs.vec_spread.VecSimpleSpread` and on this adapter alike: both
return observations [B, N, obs_dim], rewards/terminated/truncated [B, N], ``state()`` [B, S],
and reset finished environments automatically with the last observation and state kept in
``infos``. Agents with smaller observations are zero-padded to the largest (their own spaces
stay available from :meth:`ParallelBatch.observation_space`).

Agents may leave before the episode ends (knights_archers_zombies, pursuit, a custom env):
``infos["active"]`` and :attr:`ParallelBatch.active` say which agents are present in the
returned observations; a departed agent gets zero observations and rewards until its copy
resets, and an agent that vanished without being flagged is reported as terminated.

Actions are ``[B, N]`` integers (all Discrete) or ``[B, N, A]`` floats: a Box agent reads its
first ``size`` columns, a Discrete agent column 0 (mixed spaces in one environment).

Copy ``i`` starts every episode from ``reset(seed=s)`` with ``s`` drawn from its own numpy
generator (seeded with ``[seed, i]``), and the actions since that reset are remembered, so
:meth:`get_state` / :meth:`load_state` restore any deterministic environment exactly by
replaying them (mpe2's environments do not pickle their mid-episode state).

``env_workers=W`` steps the copies in W processes (each owns a contiguous slice), while the
policy still runs once per step for all B copies in the caller's process; the results are
the same as with ``env_workers=0`` (everything in this process), since each copy owns its seeds.
``first_index=k`` makes the batch copies ``k..k+B-1`` of a larger one (a data-parallel
learner's shard): copy ``i`` seeds its generator with ``[seed, k + i]``, as in the whole batch.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.registry import make


class _Layout:
    """What every shard must agree on: agents, spaces and padded sizes (plain data, picklable)."""

    def __init__(self, env: Any, env_id: str) -> None:
        self.possible_agents = list(env.possible_agents)
        self.num_agents = len(self.possible_agents)
        self.obs_spaces = [env.observation_space(a) for a in self.possible_agents]
        self.act_spaces = [env.action_space(a) for a in self.possible_agents]
        for a, space in zip(self.possible_agents, self.act_spaces, strict=True):
            if not isinstance(space, (spaces.Discrete, spaces.Box)):
                raise ValueError(f"{env_id}: agent {a!r} has action space {space}; MAPPO acts in Discrete and Box spaces")
        self.discrete = [isinstance(s, spaces.Discrete) for s in self.act_spaces]
        self.action_sizes = [int(s.n) if d else int(np.prod(s.shape)) for s, d in zip(self.act_spaces, self.discrete, strict=True)]
        self.obs_sizes = [int(np.prod(s.shape)) for s in self.obs_spaces]
        self.obs_dim = max(self.obs_sizes)
        self.has_state = hasattr(env, "state_space")
        self.state_dim = int(np.prod(env.state_space.shape)) if self.has_state else self.obs_dim * self.num_agents


class _Shard:
    """Copies ``indices`` of the batch, stepped one after another in one process."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], indices: list[int], seed: int, layout: _Layout,
                 first: Any = None) -> None:
        self.indices = list(indices)
        self.envs = [first if (k == 0 and first is not None) else make(env_id, **env_kwargs) for k in range(len(indices))]
        self.L = layout
        n = len(indices)
        self.rngs = [np.random.default_rng([seed, i]) for i in self.indices]
        self.episode_seed = [0] * n
        self.history: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.obs = np.zeros((n, layout.num_agents, layout.obs_dim), dtype=np.float32)
        self.active = np.ones((n, layout.num_agents), dtype=bool)
        self.states = np.zeros((n, layout.state_dim), dtype=np.float32)

    def pack(self, obs: dict[str, Any]) -> np.ndarray:
        out = np.zeros((self.L.num_agents, self.L.obs_dim), dtype=np.float32)
        for k, a in enumerate(self.L.possible_agents):
            if a in obs:
                flat = np.asarray(obs[a], dtype=np.float32).ravel()
                out[k, : flat.size] = flat
        return out

    def state_of(self, env: Any, packed_obs: np.ndarray, previous: np.ndarray) -> np.ndarray:
        # An env that declares a state_space implements state(); otherwise the agents'
        # observations together stand in for the global state. Some envs cannot give a state
        # once their episode is over (multiwalker reads a destroyed body): the last state
        # seen stands in for the final one (only a truncation bootstraps on it).
        if self.L.has_state:
            try:
                return np.asarray(env.state(), dtype=np.float32).ravel()
            except Exception:  # noqa: BLE001 -- any failure of a finished env's state()
                if env.agents:
                    raise
                return previous.copy()
        return packed_obs.ravel()

    def _present(self, env: Any) -> list[bool]:
        return [a in env.agents for a in self.L.possible_agents]

    def reset_one(self, j: int) -> None:
        self.episode_seed[j] = int(self.rngs[j].integers(2**31 - 1))
        self.history[j] = []
        env = self.envs[j]
        obs, _ = env.reset(seed=self.episode_seed[j])
        self.obs[j] = self.pack(obs)
        self.active[j] = self._present(env)
        self.states[j] = self.state_of(env, self.obs[j], self.states[j])

    def reset(self, seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if seed is not None:
            self.rngs = [np.random.default_rng([seed, i]) for i in self.indices]
        for j in range(len(self.envs)):
            self.reset_one(j)
        return self.obs.copy(), self.active.copy(), self.states.copy()

    def actions(self, row: np.ndarray, present: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, a in enumerate(self.L.possible_agents):
            if a not in present:
                continue
            if self.L.discrete[k]:
                out[a] = int(row[k] if row.ndim == 1 else row[k, 0])
            else:
                space = self.L.act_spaces[k]
                out[a] = row[k, : self.L.action_sizes[k]].reshape(space.shape).astype(space.dtype)
        return out

    def step(self, acts: np.ndarray) -> tuple[np.ndarray, ...]:
        n, na = len(self.envs), self.L.num_agents
        rew = np.zeros((n, na), dtype=np.float32)
        term = np.zeros((n, na), dtype=bool)
        trunc = np.zeros((n, na), dtype=bool)
        final_obs = np.zeros((n, na, self.L.obs_dim), dtype=np.float32)
        final_state = np.zeros((n, self.L.state_dim), dtype=np.float32)
        done = np.zeros(n, dtype=bool)
        for j, env in enumerate(self.envs):
            present = list(env.agents)
            action = self.actions(acts[j], present)
            self.history[j].append(action)
            obs, r, te, tr, _ = env.step(action)
            for k, a in enumerate(self.L.possible_agents):
                if a not in present:
                    continue
                rew[j, k] = r.get(a, 0.0)
                # An agent that left without saying why has ended as far as its value goes.
                term[j, k] = te.get(a, False) or (a not in env.agents and not tr.get(a, False))
                trunc[j, k] = tr.get(a, False)
            final_obs[j] = self.pack(obs)
            final_state[j] = self.state_of(env, final_obs[j], self.states[j])
            done[j] = not env.agents
            if done[j]:
                self.reset_one(j)
            else:
                self.obs[j] = final_obs[j]
                self.active[j] = self._present(env)
                self.states[j] = final_state[j]
        return self.obs.copy(), rew, term, trunc, final_obs, final_state, done, self.active.copy(), self.states.copy()

    def get_state(self) -> dict[str, Any]:
        return {"rngs": [r.bit_generator.state for r in self.rngs], "episode_seed": list(self.episode_seed),
                "history": [list(h) for h in self.history]}

    def load_state(self, saved: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for j, env in enumerate(self.envs):
            self.rngs[j].bit_generator.state = saved["rngs"][j]
            self.episode_seed[j] = saved["episode_seed"][j]
            self.history[j] = list(saved["history"][j])
            obs, _ = env.reset(seed=self.episode_seed[j])
            self.states[j] = self.state_of(env, self.pack(obs), self.states[j])
            for action in self.history[j]:
                obs, *_ = env.step(action)
                self.states[j] = self.state_of(env, self.pack(obs), self.states[j])
            self.obs[j] = self.pack(obs)
            self.active[j] = self._present(env)
        return self.obs.copy(), self.active.copy(), self.states.copy()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _serve(conn: Any, env_id: str, env_kwargs: dict[str, Any], indices: list[int], seed: int, layout: _Layout) -> None:
    """A worker process: one shard, commands from the pipe until ``close``."""
    try:
        shard = _Shard(env_id, env_kwargs, indices, seed, layout)
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "close":
                shard.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", getattr(shard, cmd)(arg) if arg is not None or cmd == "reset" else getattr(shard, cmd)()))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Remote:
    """A shard in a worker process, called like a local one (``send`` then ``recv``)."""

    def __init__(self, ctx: Any, env_id: str, env_kwargs: dict[str, Any], indices: list[int], seed: int, layout: _Layout) -> None:
        self.indices = list(indices)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, env_id, env_kwargs, indices, seed, layout), daemon=True)
        self.proc.start()
        child.close()

    def send(self, cmd: str, arg: Any = None) -> None:
        self.conn.send((cmd, arg))

    def recv(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"environment worker (copies {self.indices[0]}..{self.indices[-1]}): {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.send("close")
                self.recv()
            except (OSError, EOFError, RuntimeError):
                pass
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.conn.close()


class ParallelBatch:
    """``num_envs`` instances of ``env_id``, stepped here or in ``env_workers`` processes.

    Args:
        env_id: A registered environment id (``envs.make``).
        num_envs: Number of copies B.
        seed: Seed of the copies' generators that draw every episode's reset seed. Default 0.
        device: Torch device of the returned tensors. Default "cpu".
        env_workers: Processes stepping the copies (0: all in this process). Default 0.
        first_index: Index of the first copy in a larger batch (its seeds follow). Default 0.
        **env_kwargs: Keyword arguments of ``envs.make``.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int = 0, device: str | torch.device = "cpu", *,
                 env_workers: int = 0, first_index: int = 0, **env_kwargs: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if not isinstance(env_workers, int) or env_workers < 0:
            raise ValueError(f"env_workers must be a non-negative integer, got {env_workers!r}")
        if not isinstance(first_index, int) or first_index < 0:
            raise ValueError(f"first_index must be a non-negative integer, got {first_index!r}")
        first = make(env_id, **env_kwargs)
        self.layout = L = _Layout(first, env_id)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.possible_agents = L.possible_agents
        self.num_agents = L.num_agents
        self.continuous_actions = not all(L.discrete)
        self.action_sizes = L.action_sizes
        self.obs_sizes = L.obs_sizes
        self.obs_dim = L.obs_dim
        self.act_dim = max(L.action_sizes)
        self.state_dim = L.state_dim
        self.env_workers = min(env_workers, num_envs)
        self.first_index = first_index
        copies = np.arange(first_index, first_index + num_envs)
        if self.env_workers == 0:
            self._local: _Shard | None = _Shard(env_id, env_kwargs, copies.tolist(), seed, L, first=first)
            self._remotes: list[_Remote] = []
        else:
            first.close()
            self._local = None
            # fork: the children inherit the registry, so environments a user's module
            # registered are known there too.
            ctx = mp.get_context("fork")
            slices = np.array_split(copies, self.env_workers)
            self._remotes = [_Remote(ctx, env_id, env_kwargs, s.tolist(), seed, L) for s in slices]
            for r in self._remotes:
                r.recv()
        self._pending: np.ndarray | None = None  # actions sent by step_async, not yet collected
        self._obs = np.zeros((num_envs, L.num_agents, L.obs_dim), dtype=np.float32)
        self._active = np.ones((num_envs, L.num_agents), dtype=bool)
        self._states = np.zeros((num_envs, L.state_dim), dtype=np.float32)

    @property
    def envs(self) -> list[Any]:
        """The copies (in this process only; empty with workers)."""
        return self._local.envs if self._local is not None else []

    def observation_space(self, agent: str | None = None) -> spaces.Space:
        """The observation space of ``agent`` (default the first agent), before padding."""
        return self.layout.obs_spaces[self.possible_agents.index(agent) if agent else 0]

    def action_space(self, agent: str | None = None) -> spaces.Space:
        """The action space of ``agent`` (default the first agent)."""
        return self.layout.act_spaces[self.possible_agents.index(agent) if agent else 0]

    @property
    def active(self) -> torch.Tensor:
        """[B, N] bool: the agents present in the current observations."""
        return torch.as_tensor(self._active.copy(), device=self.device)

    # Calls on every shard ----------------------------------------------------------------------
    def _call(self, cmd: str, args: list[Any] | None = None) -> list[Any]:
        if self._local is not None:
            method = getattr(self._local, cmd)
            return [method(args[0]) if args is not None else method()]
        for k, r in enumerate(self._remotes):
            r.send(cmd, None if args is None else args[k])
        return [r.recv() for r in self._remotes]

    def _split(self, array: Any) -> list[Any]:
        if self._local is not None:
            return [array]
        k = self.first_index
        return [array[r.indices[0] - k: r.indices[-1] + 1 - k] for r in self._remotes]

    # Reset and step --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Resets every copy; ``seed`` reseeds the copies' generators first."""
        parts = self._call("reset", [seed] * max(1, len(self._remotes)))
        self._obs, self._active, self._states = (np.concatenate(x) for x in zip(*parts, strict=True))
        return self._tensor(self._obs), {}

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Steps every copy with ``actions`` ([B, N] or [B, N, A]); resets finished ones.

        Returns:
            observations, rewards, terminated, truncated (as the batched environment) and
            infos with ``final_observation``, ``final_state``, ``done`` (the copy's agent list
            is empty) and ``active`` (agents present in the returned observations).
        """
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: torch.Tensor) -> None:
        """Starts :meth:`step`: with workers they step while the caller computes; finish with :meth:`step_wait`.

        The trainer uses the time to run its critic and log-probabilities on the current
        observations, which do not depend on the step's outcome. Without workers the step
        happens in :meth:`step_wait`.
        """
        if self._pending is not None:
            raise RuntimeError("step_async called twice without step_wait")
        acts = torch.as_tensor(actions).detach().cpu().numpy()
        if acts.shape[0] != self.num_envs:
            raise ValueError(f"actions must have {self.num_envs} rows (one per copy), got shape {list(acts.shape)}")
        if self._local is None:
            for r, part in zip(self._remotes, self._split(acts), strict=True):
                r.send("step", part)
        self._pending = acts

    def step_wait(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Finishes the step begun by :meth:`step_async`; returns what :meth:`step` returns."""
        if self._pending is None:
            raise RuntimeError("step_wait called without step_async")
        acts, self._pending = self._pending, None
        parts = [self._local.step(acts)] if self._local is not None else [r.recv() for r in self._remotes]
        obs, rew, term, trunc, final_obs, final_state, done, active, states = (np.concatenate(x) for x in zip(*parts, strict=True))
        self._obs, self._active, self._states = obs, active, states
        t = torch.as_tensor
        infos = {"final_observation": self._tensor(final_obs), "final_state": self._tensor(final_state),
                 "done": t(done, device=self.device), "active": self.active}
        return self._tensor(obs), self._tensor(rew), t(term, device=self.device), t(trunc, device=self.device), infos

    def state(self) -> torch.Tensor:
        """The global state of every copy, [B, state_dim] (``env.state()``)."""
        return self._tensor(self._states)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array.copy(), device=self.device)

    # Checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Each copy's generator, episode seed and the actions taken since its reset."""
        parts = self._call("get_state")
        return {key: [v for p in parts for v in p[key]] for key in ("rngs", "episode_seed", "history")}

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`get_state` by resetting each copy with its seed and replaying its actions."""
        if len(saved.get("episode_seed", [])) != self.num_envs:
            raise ValueError(f"saved state is of {len(saved.get('episode_seed', []))} copies, this batch has {self.num_envs}")
        shards = [self._local] if self._local is not None else self._remotes
        args = [{key: [saved[key][i - self.first_index] for i in s.indices] for key in ("rngs", "episode_seed", "history")}
                for s in shards]
        parts = self._call("load_state", args)
        self._obs, self._active, self._states = (np.concatenate(x) for x in zip(*parts, strict=True))

    def close(self) -> None:
        """Closes every copy (and stops the workers)."""
        if self._local is not None:
            self._local.close()
        for r in self._remotes:
            r.close()
        self._remotes = []

    def __del__(self) -> None:
        for r in getattr(self, "_remotes", []):
            try:
                r.close()
            except Exception:  # noqa: BLE001, S110 -- interpreter shutdown: nothing more to do
                pass
