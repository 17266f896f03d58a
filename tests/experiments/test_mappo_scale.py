"""The mappo_scale_out kind's shipped config and its time-to-target summary (no training here)."""

from __future__ import annotations

import math

from experiments.mappo_scale import _plan, allreduces_per_update, to_target
from experiments.runner import prepare
from marl.mappo import MAPPOConfig


def _run(how: str, n: int, curve: list[tuple[float, int, float]], target: float) -> dict:
    """A run as :func:`experiments.mappo_scale.measure` reports it, from its greedy curve."""
    hit = next(((t, s) for t, s, r in curve if r >= target), None)
    return {"how": how, "n": n, "env_steps": curve[-1][1], "curve": curve, "final_return": curve[-1][2],
            "seconds_to_target": None if hit is None else hit[0], "steps_to_target": None if hit is None else hit[1]}


def test_the_shipped_config_trains_the_budget_that_reaches_minus_14() -> None:
    _, cfg, _ = prepare("mappo_scale_out")
    # The budget found for the target: MAPPO's defaults, the learning rate annealed over 1.2M steps.
    assert cfg.train.total_steps == 1_200_000 and cfg.train.anneal_lr and cfg.train.lr == 3e-3
    assert (cfg.train.num_envs, cfg.train.rollout_steps, cfg.train.update_epochs, cfg.train.num_minibatches) == (128, 25, 5, 4)
    assert cfg.target_return == -14.0 and cfg.counts == [1, 2, 4]
    assert _plan(cfg) == [("workers", 1), ("workers", 2), ("workers", 4), ("threads", 2), ("threads", 4)]
    # 375 updates of 128 x 25 steps; each learner makes 5 epochs x 4 minibatches + gather + returns all-reduces.
    assert math.ceil(cfg.train.total_steps / (128 * 25)) == 375
    assert allreduces_per_update(cfg.train) == 22
    assert allreduces_per_update(MAPPOConfig(num_envs=10, num_minibatches=3, update_epochs=2)) == 2 * 3 + 2


def test_time_to_target_lines_name_each_run_and_where_curves_part() -> None:
    one = [(2.0, 32_000, -20.0), (4.0, 64_000, -14.5), (6.0, 96_000, -13.9)]
    runs = {
        "workers/1": _run("workers", 1, one, -14.0),
        # The same curve (within 1e-3), slower clock: the same step to target.
        "workers/2": _run("workers", 2, [(3.0, 32_000, -20.0004), (6.0, 64_000, -14.5), (9.0, 96_000, -13.9)], -14.0),
        # Apart from the second evaluation on, and it never gets there.
        "threads/2": _run("threads", 2, [(2.5, 32_000, -20.0), (5.0, 64_000, -15.0), (7.5, 96_000, -14.25)], -14.0),
    }
    lines = to_target(runs, -14.0)
    assert lines[:3] == [
        "workers/1: reached -14 after 6.0 s and 96,000 env steps (final -13.90)",
        "workers/2: reached -14 after 9.0 s and 96,000 env steps (final -13.90)",
        "threads/2: did not reach -14 within 96,000 env steps (final -14.25)",
    ]
    assert lines[3] == "workers/2: greedy curve equal to one process's within 1e-3 at every evaluation"
    assert lines[4] == "threads/2: greedy curve apart from one process's (by over 1e-3) from 64,000 env steps on (largest gap 0.50)"
    assert len(lines) == 5  # not every run reached it: no 'same env step' line
    del runs["threads/2"]
    assert to_target(runs, -14.0)[-1] == "every run reached -14 at the same env step, 96,000"
