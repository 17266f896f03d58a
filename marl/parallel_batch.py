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

``env_workers=W`` steps the copies in W processes, while the policy still runs in the caller's
process for all the copies a step covers; the results are the same as with ``env_workers=0``
(everything in this process), since each copy owns its seeds. The copies form two halves
(:attr:`ParallelBatch.parts`) that can be stepped apart (``step_async(actions, part=p)``), as
Sample Factory's double-buffered sampling does: while the workers step one half, the caller
computes the other half's actions. Each worker owns a slice of both halves, so every worker
has copies to step whichever half is in flight.
``first_index=k`` makes the batch copies ``k..k+B-1`` of a larger one (a data-parallel
learner's shard): copy ``i`` seeds its generator with ``[seed, k + i]``, as in the whole batch.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
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

    def step(self, which: list[int], acts: np.ndarray) -> tuple[np.ndarray, ...]:
        """Steps this shard's copies at positions ``which``, copy ``which[i]`` with ``acts[i]``."""
        n, na = len(which), self.L.num_agents
        rew = np.zeros((n, na), dtype=np.float32)
        term = np.zeros((n, na), dtype=bool)
        trunc = np.zeros((n, na), dtype=bool)
        final_obs = np.zeros((n, na, self.L.obs_dim), dtype=np.float32)
        final_state = np.zeros((n, self.L.state_dim), dtype=np.float32)
        done = np.zeros(n, dtype=bool)
        for i, j in enumerate(which):
            env = self.envs[j]
            present = list(env.agents)
            action = self.actions(acts[i], present)
            self.history[j].append(action)
            obs, r, te, tr, _ = env.step(action)
            for k, a in enumerate(self.L.possible_agents):
                if a not in present:
                    continue
                rew[i, k] = r.get(a, 0.0)
                # An agent that left without saying why has ended as far as its value goes.
                term[i, k] = te.get(a, False) or (a not in env.agents and not tr.get(a, False))
                trunc[i, k] = tr.get(a, False)
            final_obs[i] = self.pack(obs)
            final_state[i] = self.state_of(env, final_obs[i], self.states[j])
            done[i] = not env.agents
            if done[i]:
                self.reset_one(j)
            else:
                self.obs[j] = final_obs[i]
                self.active[j] = self._present(env)
                self.states[j] = final_state[i]
        return self.obs[which], rew, term, trunc, final_obs, final_state, done, self.active[which], self.states[which]

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


def _die_with_parent(parent_ends: list[Any]) -> None:
    """Makes this forked worker end when the process that started it ends, however it ends.

    A forked child inherits the parent's end of its own pipe (and of the pipes of workers
    started before it); holding them open, it would never see end-of-file when the parent is
    killed and would live on as an orphan. So it closes them, and on Linux it also asks the
    kernel for SIGKILL when its parent exits (``PR_SET_PDEATHSIG``).
    """
    for end in parent_ends:
        end.close()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # end-of-file on the pipe still ends the worker
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _serve(conn: Any, env_id: str, env_kwargs: dict[str, Any], indices: list[int], seed: int, layout: _Layout,
           parent_ends: list[Any]) -> None:
    """A worker process: one shard, ``(method, args)`` commands from the pipe until ``close``."""
    _die_with_parent(parent_ends)
    try:
        shard = _Shard(env_id, env_kwargs, indices, seed, layout)
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    while True:
        cmd, args = conn.recv()
        try:
            conn.send(("ok", getattr(shard, cmd)(*args)))
            if cmd == "close":
                return
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Remote:
    """A shard in a worker process, called like a local one (``send`` then ``recv``).

    Replies come back in the order of the commands; ``recv(tag)`` keeps the replies to other
    commands sent before it, so two halves in flight can be collected in either order.
    """

    def __init__(self, ctx: Any, env_id: str, env_kwargs: dict[str, Any], indices: list[int], seed: int, layout: _Layout,
                 siblings: list[_Remote] | None = None) -> None:
        self.indices = list(indices)
        self.conn, child = ctx.Pipe()
        # The child closes the parent's ends it inherits: its own and its elder siblings'.
        ends = [self.conn] + [r.conn for r in siblings or []]
        self.proc = ctx.Process(target=_serve, args=(child, env_id, env_kwargs, indices, seed, layout, ends), daemon=True)
        self.proc.start()
        child.close()
        self._sent: list[Any] = ["start"]  # tags of the replies still to come, oldest first
        self._kept: dict[Any, tuple[str, Any]] = {}

    def send(self, cmd: str, *args: Any, tag: Any = None) -> None:
        self.conn.send((cmd, args))
        self._sent.append(cmd if tag is None else tag)

    def recv(self, tag: Any = None) -> Any:
        """The reply to the oldest command (or to the one sent with ``tag``)."""
        want = self._sent[0] if tag is None else tag
        while want not in self._kept:
            self._kept[self._sent.pop(0)] = self.conn.recv()
        status, value = self._kept.pop(want)
        if status == "error":
            raise RuntimeError(f"environment worker (copies {self.indices}): {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self._kept.clear()
                self.send("close", tag="close")
                self.recv("close")
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
        env_workers: Processes stepping the copies (0: all in this process). Default 0. At most
            one per copy of the larger half is started (:attr:`env_workers` says how many run).
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
        self.state_space = first.state_space if L.has_state else None  # its shape tells an image state
        self.first_index = first_index
        # Two halves the caller may step apart (one while it computes the other's actions).
        half = num_envs // 2
        self.parts: list[tuple[int, int]] = [(0, half), (half, num_envs)] if num_envs > 1 else [(0, num_envs)]
        if env_workers == 0:
            copies = list(range(first_index, first_index + num_envs))
            self._local: _Shard | None = _Shard(env_id, env_kwargs, copies, seed, L, first=first)
            self._remotes: list[_Remote] = []
            self._rows = [np.arange(num_envs)]  # the batch rows each shard owns, in its order
        else:
            first.close()
            self._local = None
            # Worker k owns the k-th slice of each half, so every worker steps whichever half
            # is in flight; a worker that would own no copy (more workers than copies) is not started.
            slices = zip(*(np.array_split(np.arange(lo, hi), env_workers) for lo, hi in self.parts), strict=True)
            self._rows = [rows for rows in (np.concatenate(s) for s in slices) if rows.size]
            # fork: the children inherit the registry, so environments a user's module
            # registered are known there too.
            ctx = mp.get_context("fork")
            self._remotes = []
            for rows in self._rows:
                self._remotes.append(_Remote(ctx, env_id, env_kwargs, (rows + first_index).tolist(), seed, L, self._remotes))
            for r in self._remotes:
                r.recv()
        self.env_workers = len(self._remotes)
        # Steps begun by step_async, by part (None: the whole batch): rows and actions.
        self._pending: dict[int | None, tuple[int, int, np.ndarray]] = {}
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
    def _call(self, cmd: str, args: list[tuple[Any, ...]]) -> list[Any]:
        """``cmd(*args[k])`` on shard k (all of them at once), in the shards' order."""
        if self._pending:
            raise RuntimeError(f"{cmd} called while a step is in flight: finish it with step_wait first")
        if self._local is not None:
            return [getattr(self._local, cmd)(*args[0])]
        for r, a in zip(self._remotes, args, strict=True):
            r.send(cmd, *a, tag=cmd)
        return [r.recv(cmd) for r in self._remotes]

    def _gather(self, parts: list[tuple[np.ndarray, ...]], rows: list[np.ndarray], lo: int, hi: int) -> list[np.ndarray]:
        """Each shard's arrays for its ``rows`` (batch rows) placed as rows ``lo..hi-1`` of one array per field."""
        out = []
        for field in zip(*parts, strict=True):
            whole = np.empty((hi - lo, *field[0].shape[1:]), dtype=field[0].dtype)
            for piece, r in zip(field, rows, strict=True):
                whole[r - lo] = piece
            out.append(whole)
        return out

    # Reset and step --------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Resets every copy; ``seed`` reseeds the copies' generators first."""
        parts = self._call("reset", [(seed,)] * len(self._rows))
        self._obs, self._active, self._states = self._gather(parts, self._rows, 0, self.num_envs)
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

    def step_async(self, actions: torch.Tensor, part: int | None = None) -> None:
        """Starts :meth:`step` of the whole batch or of one half (``part``, rows ``parts[part]``).

        With workers the copies step while the caller computes (the trainer acts for the other
        half meanwhile); finish with :meth:`step_wait` of the same ``part``. Without workers the
        step happens in :meth:`step_wait`.

        Args:
            actions: One row per copy of the part: ``[hi - lo, N]`` or ``[hi - lo, N, A]``.
            part: Index into :attr:`parts`, or None (default) for every copy.
        """
        if part is not None and not (isinstance(part, int) and 0 <= part < len(self.parts)):
            raise ValueError(f"part must be None or an index of parts {self.parts}, got {part!r}")
        lo, hi = self.parts[part] if part is not None else (0, self.num_envs)
        if any(plo < hi and lo < phi for plo, phi, _ in self._pending.values()):
            raise RuntimeError("step_async called twice without step_wait for the same copies")
        acts = torch.as_tensor(actions).detach().cpu().numpy()
        if acts.shape[0] != hi - lo:
            raise ValueError(f"actions must have {hi - lo} rows (one per copy of rows {lo}..{hi - 1}), got shape {list(acts.shape)}")
        if self._local is None:
            for r, rows in zip(self._remotes, self._rows, strict=True):
                mine = (rows >= lo) & (rows < hi)
                if mine.any():
                    r.send("step", np.flatnonzero(mine).tolist(), acts[rows[mine] - lo], tag=("step", part))
        self._pending[part] = (lo, hi, acts)

    def step_wait(self, part: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Finishes the step begun by :meth:`step_async` of ``part``; returns what :meth:`step`
        returns, for the part's rows."""
        if part not in self._pending:
            raise RuntimeError(f"step_wait called without step_async (part {part})")
        lo, hi, acts = self._pending.pop(part)
        if self._local is not None:
            pieces, rows = [self._local.step(list(range(lo, hi)), acts)], [np.arange(lo, hi)]
        else:
            rows = [r[(r >= lo) & (r < hi)] for r in self._rows]
            pieces = [remote.recv(("step", part)) for remote, mine in zip(self._remotes, rows, strict=True) if mine.size]
            rows = [mine for mine in rows if mine.size]
        obs, rew, term, trunc, final_obs, final_state, done, active, states = self._gather(pieces, rows, lo, hi)
        self._obs[lo:hi], self._active[lo:hi], self._states[lo:hi] = obs, active, states
        t, dev = torch.as_tensor, self.device
        infos = {"final_observation": t(final_obs, device=dev), "final_state": t(final_state, device=dev),
                 "done": t(done, device=dev), "active": t(active, device=dev)}
        return t(obs, device=dev), t(rew, device=dev), t(term, device=dev), t(trunc, device=dev), infos

    def state(self) -> torch.Tensor:
        """The global state of every copy, [B, state_dim] (``env.state()``)."""
        return self._tensor(self._states)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array.copy(), device=self.device)

    # Checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Each copy's generator, episode seed and the actions taken since its reset."""
        out: dict[str, list[Any]] = {key: [None] * self.num_envs for key in ("rngs", "episode_seed", "history")}
        for part, rows in zip(self._call("get_state", [()] * len(self._rows)), self._rows, strict=True):
            for key, values in part.items():
                for row, v in zip(rows, values, strict=True):
                    out[key][row] = v
        return out

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`get_state` by resetting each copy with its seed and replaying its actions."""
        if len(saved.get("episode_seed", [])) != self.num_envs:
            raise ValueError(f"saved state is of {len(saved.get('episode_seed', []))} copies, this batch has {self.num_envs}")
        args = [({key: [saved[key][i] for i in rows] for key in ("rngs", "episode_seed", "history")},) for rows in self._rows]
        parts = self._call("load_state", args)
        self._obs, self._active, self._states = self._gather(parts, self._rows, 0, self.num_envs)

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
