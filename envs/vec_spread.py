"""A batched torch ``simple_spread``: B copies of mpe2's ``simple_spread_v3`` stepped at once.

``envs.make_vec("mpe/simple_spread-v3", num_envs=B, device="cpu", N=3, local_ratio=0.5,
max_cycles=25, continuous_actions=False)`` builds one. The dynamics, observations and rewards
are mpe2's (``mpe2/simple_spread/simple_spread.py`` and ``mpe2/_mpe_utils/core.py``):

* agents of size 0.15 and mass 1, silent; landmarks do not collide; ``dt = 0.1``,
  damping 0.25, action sensitivity 5, contact force 100 with a softplus margin of 1e-3;
* the velocity update uses the force of this step, the position update the old velocity;
* an agent's observation is ``[vel, pos, landmark - pos (N), other - pos (N-1), comm (N-1)]``
  where the communication of silent agents is zeros; ``state()`` concatenates all of them;
* the reward of agent i is ``(1 - local_ratio) * global + local_ratio * local_i`` with
  ``global = -sum_l min_i |p_i - l|`` and ``local_i = -#{j != i : |p_i - p_j| < 0.3}``.

Unlike mpe2, every environment draws its initial positions from one torch generator owned by
the batch (``reset(seed=...)``), so the two agree on dynamics, not on the random starts; the
equivalence test copies mpe2's starting world in with :meth:`VecSimpleSpread.set_world`.
Both float32 (the default, faster) and float64 match mpe2 within 1e-5 over whole episodes
(mpe2 itself returns float32 observations).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.registry import register_vec

AGENT_SIZE = 0.15
DT = 0.1
DAMPING = 0.25
SENSITIVITY = 5.0
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
CAPTURE_RADIUS = 0.1
# Discrete actions [no_action, move_left, move_right, move_down, move_up] as unit forces.
_MOVES = ((0.0, 0.0), (-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))


class VecSimpleSpread:
    """``num_envs`` simple_spread worlds as tensors, reset automatically when they finish.

    Args:
        num_envs: Number of environments B.
        N: Agents and landmarks per environment. Default 3.
        local_ratio: Weight of the local (collision) reward, in [0, 1]. Default 0.5.
        max_cycles: Steps until truncation. Default 25.
        continuous_actions: Actions in [0, 1]^5 (clipped) instead of Discrete(5). Default False.
        terminate_on_success: Terminate once every landmark is within 0.1 of an agent. Default False.
        device: Torch device of every tensor. Default "cpu".
        dtype: Floating dtype of the simulation. Default torch.float32.
        seed: Seed of the batch's generator for the first reset. Default None.
        shard: ``(start, total)``: these are environments ``start..start+num_envs-1`` of a batch
            of ``total`` (a data-parallel learner's shard); resets draw for the whole batch and
            keep these rows, so the shards start where the whole batch would. Default None.
        landmark_range: ``(low, high)``: each landmark coordinate is drawn uniformly from it
            (agents still start in [-1, 1]^2). Default (-1.0, 1.0), mpe2's placement; a
            federated site may place its landmarks elsewhere (non-IID sites). The attributes
            ``landmark_mid`` and ``landmark_half`` may be set to [B, 1, 1] tensors to give each
            world its own range (a union of sites in one batch).
    """

    def __init__(
        self,
        num_envs: int,
        N: int = 3,
        local_ratio: float = 0.5,
        max_cycles: int = 25,
        continuous_actions: bool = False,
        terminate_on_success: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        shard: tuple[int, int] | None = None,
        landmark_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be a positive integer, got {N!r}")
        if not 0.0 <= local_ratio <= 1.0:
            raise ValueError(f"local_ratio must be in [0, 1], got {local_ratio!r}")
        if not isinstance(max_cycles, int) or max_cycles < 1:
            raise ValueError(f"max_cycles must be a positive integer, got {max_cycles!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        try:
            low, high = (float(v) for v in landmark_range)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"landmark_range must be two finite numbers (low, high) with low < high, got {landmark_range!r}")
        start, total = shard if shard is not None else (0, num_envs)
        if not 0 <= start <= total - num_envs:
            raise ValueError(f"shard (start, total) = {shard!r} must hold start..start+num_envs-1 = {start}..{start + num_envs - 1} in 0..total-1")
        self._shard = (start, total)
        self.num_envs = num_envs
        self.num_agents = N
        self.local_ratio = float(local_ratio)
        # Landmark coordinates are mid + half * u with u uniform in [-1, 1] (the default range
        # gives mid 0, half 1: the draws themselves, as before the range existed).
        self.landmark_mid: float | torch.Tensor = (low + high) / 2
        self.landmark_half: float | torch.Tensor = (high - low) / 2
        self.max_cycles = max_cycles
        self.continuous_actions = continuous_actions
        self.terminate_on_success = terminate_on_success
        self.device = torch.device(device)
        self.dtype = dtype
        self.possible_agents = [f"agent_{i}" for i in range(N)]
        self.obs_dim = 4 + 2 * N + 4 * (N - 1)
        self.state_dim = N * self.obs_dim
        self.act_dim = 5
        self._observation_space = spaces.Box(-np.float32(np.inf), np.float32(np.inf), (self.obs_dim,), np.float32)
        self._action_space = (
            spaces.Box(0.0, 1.0, (self.act_dim,), np.float32) if continuous_actions else spaces.Discrete(self.act_dim)
        )
        self.state_space = spaces.Box(-np.float32(np.inf), np.float32(np.inf), (self.state_dim,), np.float32)

        kw = {"device": self.device, "dtype": dtype}
        self._moves = torch.tensor(_MOVES, **kw) * SENSITIVITY
        # An infinite distance to itself: no contact force and no collision with itself.
        self._self_pairs = torch.diag(torch.full((N,), float("inf"), **kw))
        # continuous action a -> force direction (a[2] - a[1], a[4] - a[3]), as mpe2 reads it.
        self._continuous_map = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], **kw)
        # others[i] lists every agent but i, in mpe2's order.
        self._others = torch.tensor([[j for j in range(N) if j != i] for i in range(N)], device=self.device, dtype=torch.long)
        self._rows = torch.arange(N, device=self.device).unsqueeze(1).expand(N, N - 1)
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._comm = torch.zeros(num_envs, N, 2 * (N - 1), **kw)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()  # fresh entropy, as Gymnasium does for reset(seed=None)
        else:
            self.generator.manual_seed(seed)
        self.agent_pos = torch.zeros(num_envs, N, 2, **kw)
        self.agent_vel = torch.zeros(num_envs, N, 2, **kw)
        self.landmark_pos = torch.zeros(num_envs, N, 2, **kw)
        self.steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    # Spaces of one agent (every agent has the same) -----------------------------------------
    def observation_space(self, agent: str | None = None) -> spaces.Box:
        """The observation space of one agent."""
        return self._observation_space

    def action_space(self, agent: str | None = None) -> spaces.Space:
        """The action space of one agent: Discrete(5) or Box(0, 1, (5,))."""
        return self._action_space

    # Reset -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Resets every environment; ``seed`` reseeds the batch's generator first.

        Returns:
            Observations [B, N, obs_dim] and an empty info dict.
        """
        if seed is not None:
            self.generator.manual_seed(seed)
        self._reset_where(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._observations(), {}

    def _reset_where(self, mask: torch.Tensor) -> None:
        # Draw for every environment and keep the draws of the masked ones: one generator call
        # per reset keeps the random stream independent of which environments finished.
        start, total = self._shard
        shape = (total, 2 * self.num_agents, 2)
        draw = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)[start:start + self.num_envs] * 2 - 1
        m = mask.view(-1, 1, 1)
        self.agent_pos = torch.where(m, draw[:, : self.num_agents], self.agent_pos)
        landmarks = draw[:, self.num_agents :]
        if not (isinstance(self.landmark_half, float) and self.landmark_half == 1.0 and self.landmark_mid == 0.0):
            # Only a moved range pays the two passes (the default is every reset of every run).
            landmarks = landmarks * self.landmark_half + self.landmark_mid
        self.landmark_pos = torch.where(m, landmarks, self.landmark_pos)
        self.agent_vel = torch.where(m, torch.zeros_like(self.agent_vel), self.agent_vel)
        self.steps = torch.where(mask, torch.zeros_like(self.steps), self.steps)
        self._pairs = None

    def set_world(self, agent_pos: Any, landmark_pos: Any, agent_vel: Any | None = None) -> torch.Tensor:
        """Sets every environment's world (positions [B, N, 2]) and restarts its episode.

        Returns:
            The observations of that world, [B, N, obs_dim].
        """
        kw = {"device": self.device, "dtype": self.dtype}
        self.agent_pos = torch.as_tensor(np.asarray(agent_pos), **kw).expand(self.num_envs, self.num_agents, 2).clone()
        self.landmark_pos = torch.as_tensor(np.asarray(landmark_pos), **kw).expand(self.num_envs, self.num_agents, 2).clone()
        vel = torch.zeros_like(self.agent_pos) if agent_vel is None else torch.as_tensor(np.asarray(agent_vel), **kw)
        self.agent_vel = vel.expand(self.num_envs, self.num_agents, 2).clone()
        self.steps.zero_()
        self._pairs = None
        return self._observations()

    # Step ------------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Advances every environment by one step and resets those that finish.

        Args:
            actions: [B, N] integers in [0, 5) for discrete actions, [B, N, 5] for continuous.

        Returns:
            observations [B, N, obs_dim] (of the new episode where one finished), rewards
            [B, N], terminated [B, N], truncated [B, N] and infos with ``final_observation``
            [B, N, obs_dim], ``final_state`` [B, state_dim] (the last observation of each
            environment before any reset), ``done`` [B], ``covered_landmarks`` [B] (landmarks
            within 0.1 of an agent after this step) and ``collisions`` [B] (colliding pairs).
        """
        force = self._action_force(actions)
        if self._pairs is None:
            self._pairs = self._pairwise()
        toward, dist = self._pairs  # toward[b, i, j] = p_j - p_i; dist with +inf on the diagonal
        # mpe2's soft contact: penetration = k * log(1 + exp(-(dist - dist_min) / k)), pushing
        # agent i away from j along p_i - p_j; the diagonal's infinite distance gives zero force.
        penetration = torch.nn.functional.softplus((2 * AGENT_SIZE - dist) / CONTACT_MARGIN)
        scale = penetration * (CONTACT_FORCE * CONTACT_MARGIN) / dist
        force = force - (toward * scale.unsqueeze(-1)).sum(dim=2)
        # Position moves with the old velocity; the velocity is damped, then pushed.
        self.agent_pos = torch.add(self.agent_pos, self.agent_vel, alpha=DT)
        self.agent_vel = torch.add(self.agent_vel * (1 - DAMPING), force, alpha=DT)
        self.steps = self.steps + 1

        self._pairs = self._pairwise()
        toward, dist = self._pairs
        rel_landmarks = self.landmark_pos.unsqueeze(1) - self.agent_pos.unsqueeze(2)  # [B, N, L, 2]
        closest = torch.linalg.vector_norm(rel_landmarks, dim=-1).amin(dim=1)  # [B, L]
        collisions = (dist < 2 * AGENT_SIZE).sum(dim=2)  # [B, N], the diagonal is +inf
        rewards = closest.sum(dim=1, keepdim=True) * (self.local_ratio - 1) - collisions * self.local_ratio
        covered = closest < CAPTURE_RADIUS
        truncated = self.steps >= self.max_cycles
        if self.terminate_on_success:
            terminated = covered.all(dim=1) & ~truncated
            done = terminated | truncated
        else:
            terminated = torch.zeros_like(truncated)
            done = truncated
        obs = self._observations(rel_landmarks, toward)
        infos: dict[str, Any] = {
            "final_observation": obs,
            "final_state": obs.reshape(self.num_envs, -1),
            "done": done,
            "covered_landmarks": covered.sum(dim=1),
            "collisions": collisions.sum(dim=1) // 2,
        }
        if bool(done.any()):
            self._reset_where(done)
            obs = self._observations()
        n = self.num_agents
        return obs, rewards, terminated.unsqueeze(1).expand(-1, n), truncated.unsqueeze(1).expand(-1, n), infos

    def _pairwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Kept from the end of one step to the start of the next: the positions are the same.
        toward = self.agent_pos.unsqueeze(1) - self.agent_pos.unsqueeze(2)  # [B, N, N, 2]
        dist = torch.linalg.vector_norm(toward, dim=-1) + self._self_pairs
        return toward, dist

    def _action_force(self, actions: torch.Tensor) -> torch.Tensor:
        actions = torch.as_tensor(actions, device=self.device)
        if self.continuous_actions:
            if actions.shape != (self.num_envs, self.num_agents, self.act_dim):
                raise ValueError(f"actions must have shape [B, N, 5] = {[self.num_envs, self.num_agents, 5]}, got {list(actions.shape)}")
            # mpe2 clips out-of-bounds continuous actions to the Box before using them.
            a = actions.to(self.dtype).clamp(0.0, 1.0)
            return (a @ self._continuous_map) * SENSITIVITY
        if actions.shape != (self.num_envs, self.num_agents):
            raise ValueError(f"actions must have shape [B, N] = {[self.num_envs, self.num_agents]}, got {list(actions.shape)}")
        lo, hi = torch.aminmax(actions) if actions.dtype != torch.bool else (0, 1)
        if actions.dtype.is_floating_point or lo < 0 or hi >= self.act_dim:
            raise ValueError("discrete actions must be integers in [0, 5)")
        return self._moves[actions]

    def _observations(self, rel_landmarks: torch.Tensor | None = None, toward: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.agent_pos
        if rel_landmarks is None:
            rel_landmarks = self.landmark_pos.unsqueeze(1) - pos.unsqueeze(2)
        if toward is None:
            toward = pos.unsqueeze(1) - pos.unsqueeze(2)
        rel_others = toward[:, self._rows, self._others]  # [B, N, N-1, 2]: p_j - p_i, j != i
        b, n = self.num_envs, self.num_agents
        return torch.cat((self.agent_vel, pos, rel_landmarks.reshape(b, n, -1), rel_others.reshape(b, n, -1), self._comm), dim=2)

    def state(self) -> torch.Tensor:
        """The global state [B, N * obs_dim]: every agent's observation, in agent order."""
        return self._observations().reshape(self.num_envs, -1)

    # Checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the worlds, step counters and the generator."""
        return {
            "agent_pos": self.agent_pos.cpu(),
            "agent_vel": self.agent_vel.cpu(),
            "landmark_pos": self.landmark_pos.cpu(),
            "steps": self.steps.cpu(),
            "generator": self.generator.get_state(),
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        kw = {"device": self.device, "dtype": self.dtype}
        self.agent_pos = saved["agent_pos"].to(**kw)
        self.agent_vel = saved["agent_vel"].to(**kw)
        self.landmark_pos = saved["landmark_pos"].to(**kw)
        self.steps = saved["steps"].to(self.device)
        self.generator.set_state(saved["generator"])
        self._pairs = None

    def close(self) -> None:
        """Nothing to release; here for the ParallelEnv-like interface."""


def make_vec_spread(num_envs: int, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", **kwargs: Any) -> VecSimpleSpread:
    """Factory for ``envs.make_vec("mpe/simple_spread-v3", ...)``; ``dtype`` may be a name."""
    if isinstance(dtype, str):
        allowed = {"float32": torch.float32, "float64": torch.float64}
        if dtype not in allowed:
            raise ValueError(f"dtype must be one of {', '.join(allowed)}, got {dtype!r}")
        dtype = allowed[dtype]
    return VecSimpleSpread(num_envs, device=device, dtype=dtype, **kwargs)


register_vec("mpe/simple_spread-v3", make_vec_spread)
