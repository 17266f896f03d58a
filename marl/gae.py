"""Generalized advantage estimation that keeps termination and truncation apart.

At step t an agent gets reward ``r_t``; ``next_value_t`` is the critic's value of the state
the step led to (the final state of the episode when it ended there, before any reset).

* terminated: the episode really ended, the future is worth 0 -> no bootstrap;
* truncated: the episode was cut by a time limit, the future still exists -> bootstrap on
  ``next_value_t``;
* either way the advantage recursion stops at the episode boundary.

::

    delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done = terminated | truncated

Agents that leave early (MAPPO's active masks): where ``active_t`` is false the agent was not
there to act, so ``A_t = 0`` and nothing flows through that step; the step where it left
carries ``terminated`` and ends its recursion like an episode end.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of one rollout (time first, any trailing batch shape).

    Args:
        rewards: [T, ...] rewards.
        values: [T, ...] critic values of the states the actions were taken in.
        next_values: [T, ...] critic values of the states each step led to (the final state
            where an episode ended, not the reset state that follows it).
        terminated: [T, ...] bool, the episode ended at this step.
        truncated: [T, ...] bool, the episode was cut at this step by a time limit.
        gamma: Discount in [0, 1].
        gae_lambda: GAE lambda in [0, 1].
        active: [T, ...] bool, the agent was present and acted at this step. Default all.

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    if not (rewards.shape == values.shape == next_values.shape == terminated.shape == truncated.shape):
        raise ValueError(
            "rewards, values, next_values, terminated and truncated must have one shape, got "
            f"{[list(t.shape) for t in (rewards, values, next_values, terminated, truncated)]}"
        )
    if active is not None and active.shape != rewards.shape:
        raise ValueError(f"active must have the shape of rewards {list(rewards.shape)}, got {list(active.shape)}")
    live = torch.ones_like(values) if active is None else active.to(values.dtype)
    not_terminated = (~terminated.bool()).to(values.dtype)
    not_done = (~(terminated.bool() | truncated.bool())).to(values.dtype)
    deltas = (rewards + gamma * not_terminated * next_values - values) * live
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * gae_lambda * not_done[t] * live[t] * running
        advantages[t] = running
    return advantages, advantages + values
