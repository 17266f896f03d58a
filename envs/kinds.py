"""Experiment kind ``rollout``: a baseline policy played on any registered environment."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from envs.api import RandomPolicy
from envs.registry import make, registered
from experiments import ExperimentConfig, RunContext, UserError, register_kind


class RolloutConfig(ExperimentConfig):
    """Plays ``policy`` on ``env`` for ``episodes`` episodes and records each agent's return."""

    env: str = Field("mpe/simple_spread-v3", description="A registered environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of envs.make.")
    policies: list[Literal["random", "noop"]] = Field(["random", "noop"], description="Baselines to play.")
    episodes: int = Field(20, gt=0, description="Episodes per policy.")


def play(env: Any, policy: Any, episodes: int, seed: int) -> np.ndarray:
    """Mean per-agent return of each episode (``episodes`` values)."""
    returns = np.zeros(episodes)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total = 0.0
        while env.agents:
            names = list(env.agents)
            acts = policy(np.stack([obs[a] for a in names]))
            obs, rew, term, trunc, _ = env.step(dict(zip(names, acts, strict=True)))
            total += sum(rew.values()) / len(env.possible_agents)
        returns[ep] = total
    return returns


class NoopPolicy:
    """Action 0 for every agent (a no-op in the MPE discrete action spaces)."""

    def __init__(self, action_space: Any) -> None:
        self.zero = np.zeros(action_space.shape, dtype=action_space.dtype) if action_space.shape else 0

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return np.array([self.zero] * len(observations))


@register_kind("rollout", RolloutConfig, axis="intelligence",
               description="Baseline policies (random, no-op) played on a registered environment")
def run_rollout(cfg: RolloutConfig, ctx: RunContext) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cfg.env not in registered():
        raise UserError(f"config key 'env' = {cfg.env!r} is not a registered environment (allowed: {', '.join(registered())})")
    env = make(cfg.env, **cfg.env_kwargs)
    space = env.action_space(env.possible_agents[0])
    results: dict[str, np.ndarray] = dict(ctx.resume_state or {})
    for name in ctx.progress(cfg.policies, description=f"rollout {cfg.env}"):
        if name in results:
            continue
        policy = RandomPolicy(space, seed=cfg.seed) if name == "random" else NoopPolicy(space)
        returns = play(env, policy, cfg.episodes, cfg.seed)
        for ep, r in enumerate(returns):
            ctx.log(policy=name, episode=ep, mean_agent_return=float(r))
        results[name] = returns
        ctx.save_checkpoint(results)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, returns in results.items():
        ax.plot(returns, marker="o", ms=3, label=f"{name} (mean {returns.mean():.2f})")
    ax.set(xlabel="episode", ylabel="mean per-agent return", title=f"Baselines on {cfg.env}")
    ax.legend()
    ctx.save_figure(fig, "returns")
    return {f"{name}_mean_return": float(r.mean()) for name, r in results.items()}
