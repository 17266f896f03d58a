"""Experiment kind ``rollout``: baselines or a saved policy played on any registered environment.

The episodes and the baselines are :mod:`marl.evaluate`'s (the one rollout-and-baselines
module); this module holds the config, its checks of an environment's keyword arguments, and
the figure.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import typing
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from envs.registry import IMAGE_OPTIONS, make
from experiments import ExperimentConfig, RunContext, UserError, register_kind


class RolloutConfig(ExperimentConfig):
    """Plays ``policy`` on ``env`` for ``episodes`` episodes and records each agent's return."""

    env: str = Field("mpe/simple_spread-v3", description="A registered environment id.")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of envs.make.")
    policies: list[Literal["random", "noop", "saved"]] = Field(["random", "noop"], description="Policies to play: baselines, or 'saved' (the policy in policy_dir).")
    policy_dir: str | None = Field(None, description="A MAPPO/IPPO run directory (or policy directory) whose saved policy 'saved' plays.")
    episodes: int = Field(20, gt=0, le=100_000, description="Episodes per policy.")

    @model_validator(mode="after")
    def _env_exists_and_takes_kwargs(self) -> RolloutConfig:
        check_env_kwargs(self.env, self.env_kwargs, key="env")
        if "saved" in self.policies:
            if self.policy_dir is None:
                raise ValueError("policies has 'saved' but policy_dir is not set (a MAPPO run directory)")
            import json

            from marl.policy import find_policy_dir

            try:
                meta = json.loads((find_policy_dir(self.policy_dir) / "policy.json").read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"policy_dir: {exc}") from None
            if meta.get("env") != self.env:
                raise ValueError(f"policy_dir: the policy was trained on {meta.get('env')!r}, not env = {self.env!r}")
        return self


# Bounds on an environment's integer keyword arguments: counts of agents stay what a 24 GiB
# machine steps in reasonable time; every other count (cycles, turns) is at least 1.
MAX_AGENTS = 10_000
MAX_COUNT = 1_000_000
_AGENT_COUNTS = ("N", "n_agents", "num_agents", "k")


def env_parameters(env_id: str) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters the environment ``env_id`` accepts, or None when it cannot tell."""
    from envs.registry import spec

    factory = spec(env_id).factory
    target: Any = factory
    if isinstance(factory, functools.partial) and getattr(factory.func, "__name__", "") == "_parallel_env":
        target = importlib.import_module(f"mpe2.{factory.args[0]}").raw_env  # mpe2's own constructor
    params = dict(inspect.signature(target).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # A thin factory (**kwargs): the class it returns holds the real signature.
        try:
            returned = typing.get_type_hints(target).get("return")
        except Exception:  # noqa: BLE001 -- unresolvable hints: cannot tell
            return None
        if not isinstance(returned, type):
            return None
        params = dict(inspect.signature(returned.__init__).parameters)
        params.pop("self", None)
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
    return {n: p for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_env_kwargs(env_id: str, kwargs: dict[str, Any], *, key: str = "env") -> None:
    """Checks an environment id and its keyword arguments without building the environment.

    Names must be parameters of the environment's constructor; values must have the type of
    the parameter's default (bool, int, float, str or None) and counts must be in bounds.

    Raises:
        ValueError: naming the config key (``key`` or ``key``'s sibling ``env_kwargs.NAME``).
    """
    from envs.registry import registered

    known = registered()
    if env_id not in known:
        import difflib

        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{key} = {env_id!r} is not a registered environment{hint} (registered: {', '.join(known)})")
    params = env_parameters(env_id)
    prefix = key.rpartition(".")[0]
    kw = f"{prefix + '.' if prefix else ''}env_kwargs"
    # envs.make's own options (image preprocessing), not the constructor's.
    image = {k: v for k, v in kwargs.items() if k in IMAGE_OPTIONS}
    if image:
        from envs.image import ImagePreprocess

        for name, value in image.items():
            try:
                ImagePreprocess.check_options(**{name: value})
            except ValueError as exc:
                raise ValueError(f"{kw}.{name}: {exc}") from None
    if params is None:
        if image:
            _build_check(env_id, kwargs, kw)  # whether the environment has images to reduce
        return
    for name, value in kwargs.items():
        if name in IMAGE_OPTIONS:
            continue
        if name not in params:
            raise ValueError(f"{kw}.{name}: {env_id} takes no argument {name!r} (allowed: {', '.join(params)})")
        default = params[name].default
        if default is inspect.Parameter.empty:
            continue
        where = f"{kw}.{name} = {value!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: expected true or false")
        elif isinstance(default, int) or (default is None and "int" in str(params[name].annotation)):
            if value is None and default is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: expected an integer")
            top = MAX_AGENTS if name in _AGENT_COUNTS else MAX_COUNT
            if not 1 <= value <= top:
                raise ValueError(f"{where}: must be in 1..{top}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: expected a finite number")
        elif name == "render_mode":
            if value not in (None, "rgb_array"):
                raise ValueError(f"{where}: allowed null or 'rgb_array' (no windows in a run)")
        elif default is None or isinstance(default, str):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}: expected a string or null")
    # The environment's own checks (n_agents >= 2, k < n_agents, ...) on values now known to be
    # small: building it costs milliseconds.
    _build_check(env_id, kwargs, kw)


def _build_check(env_id: str, kwargs: dict[str, Any], kw: str) -> None:
    try:
        env = make(env_id, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kw}: {env_id} refuses {kwargs}: {exc}") from None
    with contextlib.suppress(Exception):
        env.close()


@register_kind("rollout", RolloutConfig, axis="intelligence",
               description="Baseline policies (random, no-op) played on a registered environment")
def run_rollout(cfg: RolloutConfig, ctx: RunContext) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        env = make(cfg.env, **cfg.env_kwargs)
    except (TypeError, ValueError) as exc:  # a value the environment's own checks refuse
        raise UserError(f"config key 'env_kwargs': {exc}") from None
    from marl.evaluate import noop_policy, play_episodes, random_policy

    results: dict[str, np.ndarray] = dict(ctx.resume_state or {})
    for name in ctx.progress(cfg.policies, description=f"rollout {cfg.env}"):
        if name in results:
            continue
        if name == "saved":
            from marl.policy import load_policy

            policy: Any = load_policy(cfg.policy_dir)
        else:
            policy = random_policy(env, cfg.seed) if name == "random" else noop_policy(env)
        # Mean per-agent return of each episode.
        returns = np.array([sum(ep.values()) / len(env.possible_agents)
                            for ep in play_episodes(env, policy, cfg.episodes, cfg.seed)])
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
