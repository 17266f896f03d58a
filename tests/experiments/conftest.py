"""A tiny experiment kind for exercising the runner: a seeded random walk with checkpoints."""

import os
import time
from typing import Literal

import numpy as np
from pydantic import Field

from experiments import ExperimentConfig, RunContext, Section, register_kind


class Optim(Section):
    lr: float = Field(0.5, gt=0, description="Step size.")
    schedule: Literal["const", "decay"] = Field("const", description="Step size schedule.")


class WalkConfig(ExperimentConfig):
    steps: int = Field(12, gt=0, description="Steps.")
    checkpoint_every: int = Field(3, gt=0, description="Steps between checkpoints.")
    optim: Optim = Field(default_factory=Optim)


@register_kind("test_walk", WalkConfig, axis="training", description="seeded random walk (tests only)")
def run_walk(cfg: WalkConfig, ctx: RunContext) -> dict:
    import matplotlib.pyplot as plt

    state = ctx.resume_state or {"step": 0, "x": 0.0, "rng": np.random.default_rng(cfg.seed).bit_generator.state}
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    crash_at = int(os.environ.get("AGORA_TEST_CRASH_AT", "-1"))
    pause = float(os.environ.get("AGORA_TEST_STEP_SECONDS", "0"))  # slow steps, for signals to land mid-run
    xs = []
    for step in range(state["step"], cfg.steps):
        lr = cfg.optim.lr / (1 + step) if cfg.optim.schedule == "decay" else cfg.optim.lr
        state["x"] += lr * rng.normal()
        ctx.log(step=step, x=state["x"])
        xs.append(state["x"])
        time.sleep(pause)
        if step == crash_at:
            raise RuntimeError(f"crash injected at step {step}")
        if (step + 1) % cfg.checkpoint_every == 0:
            ctx.save_checkpoint({"step": step + 1, "x": state["x"], "rng": rng.bit_generator.state})
    fig, ax = plt.subplots()
    ax.plot(xs)
    ctx.save_figure(fig, "walk")
    if os.environ.get("AGORA_TEST_NAN_HEADLINE"):
        return {"final_x": state["x"], "spread": {"last": float("nan")}}
    return {"final_x": state["x"]}
