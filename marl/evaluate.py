"""Rollouts and baselines: every policy of the project played through the one Policy contract.

A policy is an :class:`envs.api.Policy`: observations ``[B, N, obs_dim]`` in (B worlds, N
agents, padded as :class:`marl.parallel_batch.ParallelBatch` gives them), the environment's
actions ``[B, N]`` (or ``[B, N, A]``) out. A trained actor, a saved one
(:class:`marl.policy.SavedPolicy`) and the baselines here all are one.

* :func:`evaluate` plays one episode in each of ``episodes`` environments at once (the same
  starting worlds for every policy given the same seed) and reports, in mpe2's convention,
  the per-agent return: each agent's summed reward over the episode, averaged over agents and
  episodes. On simple_spread it also reports the landmarks covered (within 0.1 of an agent) at
  the end of the episode and the colliding pairs summed over the episode.
* :func:`play_episodes` plays a policy on one PettingZoo ``ParallelEnv``, episode after
  episode (the ``rollout`` experiment kind, ``agora play``): each observation dict is packed
  into a batch of one world, each action row unpacked into the agent's action.

Baselines: ``random`` (uniform actions from a seeded generator), ``noop`` (action 0) and
``scripted`` (agent i steers to landmark i, simple_spread only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from envs.api import Policy

if TYPE_CHECKING:
    from marl.policy import Group


@torch.no_grad()
def evaluate(policy: Policy, env: Any, seed: int, teams: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Plays one episode per environment of ``env`` (reset with ``seed``).

    Args:
        policy: Observations [B, N, obs_dim] -> actions [B, N] (or [B, N, A]).
        env: A batched environment (``envs.make_vec`` or :class:`marl.parallel_batch.ParallelBatch`).
        seed: Reset seed; the same seed gives every policy the same starting worlds.
        teams: Team name -> agent indices. With more than one team, each team's return is
            reported (``return_TEAM``) and no ``return`` averages opponents together.

    Returns:
        ``return`` (per-agent, mean over episodes) and ``return_std`` (over episodes), or per
        team ``return_TEAM`` and ``return_std_TEAM``; ``episodes``; on simple_spread
        ``covered_landmarks`` and ``collisions``.
    """
    obs, _ = env.reset(seed=seed)
    b, n = env.num_envs, env.num_agents
    total = torch.zeros(b, n, dtype=torch.float64)
    collisions = torch.zeros(b, dtype=torch.float64)
    covered = torch.zeros(b, dtype=torch.float64)
    running = torch.ones(b, dtype=torch.bool)
    has_spread_info = False
    while bool(running.any()):
        obs, reward, _, _, infos = env.step(policy(obs))
        total += torch.where(running.unsqueeze(1), reward.double().cpu(), 0.0)
        if "collisions" in infos:
            has_spread_info = True
            collisions += torch.where(running, infos["collisions"].double().cpu(), 0.0)
            covered = torch.where(running, infos["covered_landmarks"].double().cpu(), covered)
        running &= ~infos["done"].cpu()
    out: dict[str, Any] = {}
    teams = teams or {"all": list(range(n))}
    for name, idx in teams.items():
        per_episode = total[:, idx].mean(dim=1)
        suffix = "" if len(teams) == 1 else f"_{name}"
        out[f"return{suffix}"] = per_episode.mean().item()
        out[f"return_std{suffix}"] = per_episode.std().item() if b > 1 else 0.0
    out["episodes"] = b
    if has_spread_info:
        out.update(covered_landmarks=covered.mean().item(), collisions=collisions.mean().item())
    return out


def random_policy(env: Any, seed: int) -> Policy:
    """Uniform random actions from the policy's own generator (inside each Box's bounds)."""
    from marl.policy import groups_of

    gen = torch.Generator().manual_seed(seed)
    groups = groups_of(env)
    all_discrete = all(g.discrete for g in groups)
    width = max(1 if g.discrete else g.size for g in groups)

    def act(obs: torch.Tensor) -> torch.Tensor:
        b, n = obs.shape[:2]
        out = torch.zeros(b, n, width)
        for g in groups:
            idx = torch.tensor(g.agents)
            if g.discrete:
                out[:, idx, 0] = (torch.rand(b, len(idx), generator=gen) * g.size).floor()
            elif g.low is not None:
                lo, hi = torch.tensor(g.low), torch.tensor(g.high)
                out[:, idx, : g.size] = lo + (hi - lo) * torch.rand(b, len(idx), g.size, generator=gen)
            else:
                out[:, idx, : g.size] = torch.randn(b, len(idx), g.size, generator=gen)
        return out[..., 0].long() if all_discrete else out

    return act


def noop_policy(env: Any) -> Policy:
    """Action 0 for every agent (no force in the MPE discrete action space); zeros clipped to each Box."""
    from marl.policy import groups_of

    groups = groups_of(env)
    all_discrete = all(g.discrete for g in groups)
    width = max(1 if g.discrete else g.size for g in groups)

    def act(obs: torch.Tensor) -> torch.Tensor:
        b, n = obs.shape[:2]
        if all_discrete:
            return torch.zeros(b, n, dtype=torch.long)
        out = torch.zeros(b, n, width)
        for g in groups:
            if not g.discrete and g.low is not None:
                idx = torch.tensor(g.agents)
                out[:, idx, : g.size] = torch.zeros(g.size).clamp(torch.tensor(g.low), torch.tensor(g.high))
        return out

    return act


def scripted_spread_policy(env: Any, damping: float = 0.5) -> Policy:
    """simple_spread heuristic: agent i steers to landmark i from its own observation.

    The observation holds the agent's velocity (columns 0-1) and landmark l relative to it
    (columns 4 + 2l, 5 + 2l). The agent pushes along ``target - damping * velocity``: with
    discrete actions the one of the four directions closest to it (no-op once within 0.05),
    with continuous actions that vector split into its positive and negative parts.

    Args:
        env: A simple_spread batched environment (for N and the action type).
        damping: How much of the current velocity to brake against. Default 0.5.
    """
    n = env.num_agents
    moves = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])

    def act(obs: torch.Tensor) -> torch.Tensor:
        obs = obs.float().cpu()
        idx = torch.arange(n)
        rel = torch.stack((obs[:, idx, 4 + 2 * idx], obs[:, idx, 5 + 2 * idx]), dim=-1)  # [B, N, 2]
        push = rel - damping * obs[..., 0:2]
        if env.continuous_actions:
            scale = (push / 0.2).clamp(-1, 1)  # full force beyond 0.2, proportional inside
            zero = torch.zeros_like(scale[..., 0])
            return torch.stack((zero, (-scale[..., 0]).clamp(min=0), scale[..., 0].clamp(min=0),
                                (-scale[..., 1]).clamp(min=0), scale[..., 1].clamp(min=0)), dim=-1)
        best = (push @ moves.T).argmax(dim=-1) + 1
        return torch.where(rel.norm(dim=-1) < 0.05, torch.zeros_like(best), best)

    return act


def baselines(env: Any, seed: int, names: tuple[str, ...] = ("random", "noop", "scripted"),
              teams: dict[str, list[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Each baseline's :func:`evaluate` result on ``env`` with ``seed`` (scripted: simple_spread only)."""
    makers: dict[str, Callable[[], Policy]] = {
        "random": lambda: random_policy(env, seed),
        "noop": lambda: noop_policy(env),
        "scripted": lambda: scripted_spread_policy(env),
    }
    return {name: evaluate(makers[name](), env, seed, teams) for name in names}


# --------------------------------------------------------------------------------------------
# Playing a policy on one PettingZoo ParallelEnv


def pack_observations(observations: Mapping[str, Any], agents: Sequence[str], obs_dim: int) -> torch.Tensor:
    """One ParallelEnv's observation dict as a batch of one world, ``[1, N, obs_dim]`` float32.

    Each agent's observation is flattened into its row; agents absent from the dict (gone
    from the episode) and the padding of narrower observations are zeros.
    """
    packed = np.zeros((1, len(agents), obs_dim), dtype=np.float32)
    for k, a in enumerate(agents):
        if a in observations:
            flat = np.asarray(observations[a], dtype=np.float32).ravel()
            packed[0, k, : flat.size] = flat
    return torch.from_numpy(packed)


def unpack_actions(actions: np.ndarray, agents: Sequence[str], groups: Sequence[Group],
                   present: Mapping[str, Any]) -> dict[str, Any]:
    """One world's action rows ``[N]`` or ``[N, A]`` as the action dict of the agents in ``present``."""
    out: dict[str, Any] = {}
    for g in groups:
        for k in g.agents:
            a = agents[k]
            if a not in present:
                continue
            row = actions[k]
            out[a] = int(row if row.ndim == 0 else row[0]) if g.discrete else \
                row[: g.size].reshape(g.act_shape).astype(np.float32)
    return out


def act_on_dict(policy: Policy, observations: Mapping[str, Any], agents: Sequence[str], groups: Sequence[Group],
                obs_dim: int) -> dict[str, Any]:
    """The actions ``policy`` takes in one ParallelEnv step, for the agents present in ``observations``."""
    actions = policy(pack_observations(observations, agents, obs_dim))
    return unpack_actions(np.asarray(torch.as_tensor(actions).cpu())[0], agents, groups, observations)


def play_episodes(env: Any, policy: Policy, episodes: int, seed: int,
                  on_step: Callable[[Any], None] | None = None) -> list[dict[str, float]]:
    """Plays ``policy`` on the ParallelEnv ``env``; episode ``e`` starts from ``reset(seed=seed + e)``.

    Args:
        env: A PettingZoo ParallelEnv (``envs.make``).
        policy: Observations ``[1, N, obs_dim]`` -> actions ``[1, N]`` or ``[1, N, A]``.
        episodes: Episodes to play (>= 1).
        seed: Reset seed of the first episode.
        on_step: Called with ``env`` after each reset and each step (to render frames). Default None.

    Returns:
        Per episode, each agent's summed reward.
    """
    from marl.policy import groups_of

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    groups = groups_of(env)
    agents = list(env.possible_agents)
    obs_dim = max(g.obs_dim for g in groups)
    out: list[dict[str, float]] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        totals = dict.fromkeys(agents, 0.0)
        if on_step is not None:
            on_step(env)
        while env.agents:
            obs, rewards, _, _, _ = env.step(act_on_dict(policy, obs, agents, groups, obs_dim))
            for a, r in rewards.items():
                totals[a] += float(r)
            if on_step is not None:
                on_step(env)
        out.append(totals)
    return out
