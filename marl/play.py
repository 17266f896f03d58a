"""Watching and scoring a saved policy: ``agora play RUN_DIR`` and ``agora eval RUN_DIR``.

* :func:`play` rolls the saved policy out in its own environment (``envs.make`` with the
  run's keyword arguments) through :func:`marl.evaluate.play_episodes`, one episode after
  another from ``reset(seed=seed + episode)``,
  and returns each agent's and each team's return; with ``gif`` it writes the frames of the
  environment's ``rgb_array`` render as an animated GIF.
* :func:`evaluate_saved` plays ``episodes`` episodes at once on the batched evaluator of
  :mod:`marl.evaluate` and reports mean and spread, beside the random baseline on the same
  starting worlds.

:func:`add_commands` and :func:`run_command` are the command-line side (the ``agora`` CLI
dispatches ``play`` and ``eval`` here); errors a user can fix print one ``error:`` line and
exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def play(run_dir: str | Path, *, episodes: int = 1, gif: str | Path | None = None, seed: int = 0,
         greedy: bool = True, fps: int = 10) -> dict[str, Any]:
    """Plays the policy saved in ``run_dir`` for ``episodes`` episodes.

    Args:
        run_dir: A run directory (or policy directory) of a MAPPO/IPPO run.
        episodes: Episodes to play. Default 1.
        gif: Write the episodes' frames (``rgb_array`` render) here. Default None.
        seed: Episode ``e`` starts from ``reset(seed=seed + e)``. Default 0.
        greedy: Most likely actions (default) or sampled ones.
        fps: Frames per second of the GIF. Default 10.

    Returns:
        ``agent_returns`` (agent -> mean return over episodes), ``team_returns`` (team -> mean
        per-agent return), ``episode_returns`` (per episode, agent -> return), ``frames``.
    """
    import numpy as np

    import envs
    from marl.evaluate import play_episodes
    from marl.policy import load_policy

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    policy = load_policy(run_dir, greedy=greedy, seed=seed)
    kwargs = dict(policy.env_kwargs)
    if gif is not None:
        kwargs["render_mode"] = "rgb_array"
    env = envs.make(policy.env_id, **kwargs)
    frames: list[np.ndarray] = []

    def record(e: Any) -> None:
        if gif is not None:
            frames.append(np.asarray(e.render()))

    try:
        per_episode = play_episodes(env, policy, episodes, seed, on_step=record)
    finally:
        env.close()
    agent_returns = {a: float(np.mean([e[a] for e in per_episode])) for a in policy.agents}
    team_returns = {t: float(np.mean([agent_returns[a] for a in members])) for t, members in policy.teams.items()}
    if gif is not None:
        write_gif(gif, frames, fps)
    return {"agent_returns": agent_returns, "team_returns": team_returns, "episode_returns": per_episode,
            "frames": len(frames)}


def write_gif(path: str | Path, frames: list[Any], fps: int = 10) -> Path:
    """Writes RGB frames ``[H, W, 3]`` (uint8) as a looping GIF (Pillow), atomically."""
    import io

    from PIL import Image

    from envs.files import atomic_write_bytes

    if not frames:
        raise ValueError("no frames to write: the environment rendered nothing")
    images = [Image.fromarray(f[..., :3].astype("uint8")) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def evaluate_saved(run_dir: str | Path, *, episodes: int = 100, seed: int = 10_000, greedy: bool = True) -> dict[str, Any]:
    """Mean and spread of the saved policy's return over ``episodes`` episodes, beside random.

    The episodes are those of the run's own evaluator (:func:`marl.evaluate.evaluate` on the
    batched environment of the run's backend), so with the run's ``eval_episodes`` and
    ``eval_seed`` the greedy result equals the run's last evaluation exactly.

    Returns:
        ``policy`` and ``random``: each :func:`marl.evaluate.evaluate`'s result (per team when
        teams compete), and ``teams``.
    """
    from marl.evaluate import evaluate, random_policy
    from marl.mappo import MAPPOConfig, make_batched_env
    from marl.policy import load_policy

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    policy = load_policy(run_dir, greedy=greedy, seed=seed)
    cfg = MAPPOConfig(env=policy.env_id, env_kwargs=policy.env_kwargs, backend=policy.meta.get("backend", "parallel"),
                      num_envs=episodes, num_minibatches=1)
    env = make_batched_env(cfg, episodes, seed)
    index = {a: k for k, a in enumerate(policy.agents)}
    teams = {t: sorted(index[a] for a in members) for t, members in policy.teams.items()}
    try:
        return {"policy": evaluate(policy, env, seed, teams), "random": evaluate(random_policy(env, seed), env, seed, teams),
                "teams": teams}
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# The command line


def add_commands(sub: Any) -> None:
    """Adds ``play`` and ``eval`` to an argparse subparsers object."""
    p = sub.add_parser("play", help="roll out a run's saved MARL policy (returns, GIF)",
                       description="Roll the policy saved in RUN_DIR out in its environment; print per-agent and per-team returns.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--episodes", type=int, default=1, metavar="N", help="episodes to play (default 1)")
    p.add_argument("--gif", metavar="FILE", help="write the episodes as an animated GIF (the env's rgb_array render)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="episode e resets with seed S+e (default 0)")
    p.add_argument("--sample", action="store_true", help="sample actions instead of the most likely ones")
    e = sub.add_parser("eval", help="score a run's saved MARL policy against random",
                       description="Mean and spread of the saved policy's return over N episodes, beside the random baseline.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--episodes", type=int, default=100, metavar="N", help="episodes (default 100)")
    e.add_argument("--seed", type=int, default=10_000, metavar="S", help="evaluator seed (default 10000, the runs' eval_seed)")
    e.add_argument("--sample", action="store_true", help="sample actions instead of the most likely ones")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run_command(args: argparse.Namespace) -> int:
    """Runs ``play`` or ``eval``; returns the exit status (2 with one ``error:`` line for a user's mistake)."""
    try:
        if args.command == "play":
            out = play(args.run_dir, episodes=args.episodes, gif=args.gif, seed=args.seed, greedy=not args.sample)
            print(f"{args.episodes} episode(s), seed {args.seed}: mean return per agent")
            for agent, value in out["agent_returns"].items():
                print(f"  {agent}: {value:.3f}")
            print("per team (mean over its agents):")
            for team, value in out["team_returns"].items():
                print(f"  {team}: {value:.3f}")
            if args.gif:
                print(f"gif: {Path(args.gif).resolve()} ({out['frames']} frames)")
        else:
            out = evaluate_saved(args.run_dir, episodes=args.episodes, seed=args.seed, greedy=not args.sample)
            if args.json:
                print(json.dumps(out))
            else:
                _print_eval(out, args.episodes)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        text = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
        print(f"error: {text}", file=sys.stderr)
        return 2
    return 0


def _print_eval(out: dict[str, Any], episodes: int) -> None:
    teams = out["teams"]
    print(f"{episodes} episodes: per-agent return, mean +- std over episodes")
    for team in teams:
        sfx = "" if len(teams) == 1 else f"_{team}"
        label = "" if len(teams) == 1 else f" [{team}]"
        pol, rnd = out["policy"], out["random"]
        print(f"  policy{label}: {pol['return' + sfx]:.3f} +- {pol['return_std' + sfx]:.3f}   "
              f"random{label}: {rnd['return' + sfx]:.3f} +- {rnd['return_std' + sfx]:.3f}")
