"""Experiment kind ``mappo_scale_out``: MAPPO on N learner processes vs one process with N threads.

The scale-out vs scale-up picture with a real learner: the vectorized simple_spread trained by
``train.workers = N`` data-parallel learners (each steps 1/N of the environments and sums its
gradients over the ring all-reduce; :mod:`marl.distributed`) beside one process with N torch
threads. Per run: environment steps per second (evaluations left out of the clock) and the time
until the greedy return reaches ``target_return``, plus each learner's split of an update into
its own compute and its time in the ring (waiting for the slowest learner included). The
learners take one process's optimizer steps, so their learning curves against environment
steps agree (in float32 only until another summation order moves a sampled action: the summary
says from which evaluation on each curve parts from one process's); what differs is the wall
clock, and on a machine with fewer free cores than learners the honest answer can be that more
learners are slower: the summary says so, and what the same run would need to scale.

The shipped config (``configs/mappo_scale_out.yaml``) is MAPPO's defaults with a 1.2M-step
budget, over which the learning rate anneals: one process reaches the greedy per-agent return
-14 (random play -26, the scripted heuristic -12) after 0.8M-1M environment steps.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydantic import Field, field_validator

from experiments import ExperimentConfig, RunContext, register_kind
from marl.mappo import MAPPOConfig


def _default_train() -> MAPPOConfig:
    # MAPPO's defaults, with the learning rate annealed over 1.2M steps: one process reaches the
    # greedy return -14 at 0.8M-1M steps (seeds 0, 1); annealed over 700k it stalled near -15.
    return MAPPOConfig(total_steps=1_200_000)


class ScaleOutConfig(ExperimentConfig):
    """MAPPO scale-out (learner processes, ring all-reduce) vs scale-up (threads) on one env."""

    train: MAPPOConfig = Field(default_factory=_default_train, description="MAPPO hyperparameters (workers and threads are set per run).")
    counts: list[int] = Field([1, 2, 4], min_length=1, max_length=8, description="N: learner processes and threads, each 1..16.")
    target_return: float = Field(-14.0, description="Greedy per-agent return whose first crossing is the time-to-return.")
    eval_every: int = Field(10, ge=1, le=10**6, description="Updates between greedy evaluations (off the clock).")
    eval_episodes: int = Field(50, ge=1, le=10_000, description="Greedy episodes per evaluation.")
    eval_seed: int = Field(10_000, description="Reset seed of the evaluator.")

    @field_validator("counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if any(not 1 <= n <= 16 for n in v):
            raise ValueError(f"each count must be in 1..16, got {v}")
        return sorted(set(v))


def _plan(cfg: ScaleOutConfig) -> list[tuple[str, int]]:
    """(how, N) runs; one process with one thread is both the first scale-out and scale-up point."""
    if max(cfg.counts) > cfg.train.num_envs:
        from experiments import UserError

        raise UserError(f"config key 'counts' has {max(cfg.counts)} learners but 'train.num_envs' = {cfg.train.num_envs}: "
                        "each learner steps at least one environment")
    return [("workers", n) for n in cfg.counts] + [("threads", n) for n in cfg.counts if n != 1]


def measure(cfg: ScaleOutConfig, how: str, n: int) -> dict[str, Any]:
    """One run on local processes (``how`` "workers" or "threads", ``n`` of them), reduced to numbers.

    Returns:
        What rank 0 measured: env-steps/s, seconds and env steps to ``target_return`` (None if
        not reached), the final greedy return, the greedy curve, and per update the learners'
        own compute, their time in the ring (the learner that waited longest) and their CPU
        seconds (the busiest learner's own work, whatever the other tenants take).
    """
    from marl.distributed import LearnerJob, run_local

    train = cfg.train.model_copy(update={"workers": n if how == "workers" else 1, "threads": n if how == "threads" else 1})
    job = LearnerJob(config=train.model_dump(), seed=cfg.seed, eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes,
                     eval_seed=cfg.eval_seed)
    outs = run_local(job)
    out = outs[0]
    times, updates = out["times"], len(out["times"])
    steps = out["metrics"][-1]["env_steps"]
    hit = next((e for e in out["evals"] if e["return"] >= cfg.target_return), None)
    ring = max(o["allreduce_s"][-1] for o in outs)  # the learner that waited longest
    return {
        "how": how, "n": n, "updates": updates, "env_steps": steps, "wall_s": times[-1],
        "env_steps_per_s": steps / times[-1],
        "seconds_to_target": None if hit is None else times[hit["update"] - 1],
        "steps_to_target": None if hit is None else hit["env_steps"],
        "final_return": out["evals"][-1]["return"] if out["evals"] else None,
        "curve": [(times[e["update"] - 1], e["env_steps"], e["return"]) for e in out["evals"]],
        "ring_s_per_update": ring / updates, "compute_s_per_update": (times[-1] - ring) / updates,
        "cpu_s_per_update": max(o["cpu_s"][-1] for o in outs) / updates,
        "load_average": os.getloadavg()[0],  # the 1-minute load as the run ended: the other tenants
        "grad_floats": out["grad_numel"],
        "allreduces_per_update": 0 if train.workers == 1 else allreduces_per_update(train),
        "ring_alone_s_per_update": None if train.workers == 1 else ring_alone(train, out["grad_numel"], out["num_agents"]),
    }


def ring_alone(train: MAPPOConfig, grad_numel: int, num_agents: int) -> float:
    """Seconds per update the same all-reduces take on their own (no learner to wait for).

    The learners' ring time includes waiting for the slowest one; this is the transfer alone:
    the ring on ``workers`` fresh processes, best of 3, for the minibatch gradients (plus the
    five loss statistics) and the whole-batch gather of advantages, returns and masks.
    """
    from capabilities.training.launch import launch
    from capabilities.training.workers import allreduce_worker

    gather = 3 * train.rollout_steps * train.num_envs * num_agents
    out = launch(allreduce_worker, train.workers, [grad_numel + 5, gather], ["ring"], 3, timeout_s=300)
    grad_s = max(o[f"ring/{grad_numel + 5}"]["seconds"] for o in out)
    gather_s = max(o[f"ring/{gather}"]["seconds"] for o in out)
    return (allreduces_per_update(train) - 2) * grad_s + gather_s


def allreduces_per_update(train: MAPPOConfig) -> int:
    """Ring all-reduces a learner makes per update: one per minibatch, the whole-batch gather, the returns."""
    per_mb = math.ceil(train.num_envs / train.num_minibatches)
    return train.update_epochs * math.ceil(train.num_envs / per_mb) + 2


def verdict(runs: dict[str, dict[str, Any]], cores: int, load: float) -> list[str]:
    """What the numbers say: speed-ups against one process and what scaling out would need."""
    base = runs["workers/1"]["env_steps_per_s"]
    lines = []
    for key, r in runs.items():
        if key == "workers/1":
            continue
        lines.append(f"{r['n']} {r['how']}: {r['env_steps_per_s']:,.0f} env-steps/s = {r['env_steps_per_s'] / base:.2f}x "
                     f"one process ({base:,.0f}) on {cores} cores, load {load:.1f}"
                     + (" (slower)" if r["env_steps_per_s"] < base else ""))
    for r in runs.values():
        if r["how"] == "workers" and r["n"] > 1:
            one = runs["workers/1"]["compute_s_per_update"]
            lines.append(
                f"{r['n']} learners: per update each computed {r['compute_s_per_update']:.3f} s (one process: {one:.3f} s, "
                f"ideal {one / r['n']:.3f} s) and spent {r['ring_s_per_update']:.3f} s in the ring "
                f"({r['allreduces_per_update']} all-reduces of up to {r['grad_floats']:,} floats, waiting included; "
                f"the same all-reduces alone take {r['ring_alone_s_per_update']:.3f} s); "
                f"to scale it needs {r['n']} free cores (here {cores}, load {load:.1f}) and ring time well under "
                f"{one / r['n']:.3f} s per update")
    return lines


def to_target(runs: dict[str, dict[str, Any]], target: float) -> list[str]:
    """When each run reached ``target``, and whether every run learned the same curve.

    The learners and threads take one process's optimizer steps, so each greedy curve against
    environment steps should be one process's; where the curves part (float32 sums in another
    order move a sampled action, and from there the runs differ), the lines say from which
    evaluation on, so that a different step-to-target is read as that and not as faster learning.
    """
    lines = []
    for key, r in runs.items():
        if r["steps_to_target"] is None:
            lines.append(f"{key}: did not reach {target:g} within {r['env_steps']:,} env steps (final {r['final_return']:.2f})")
        else:
            lines.append(f"{key}: reached {target:g} after {r['seconds_to_target']:.1f} s and {r['steps_to_target']:,} env steps "
                         f"(final {r['final_return']:.2f})")
    ref = runs["workers/1"]["curve"]
    for key, r in runs.items():
        if key == "workers/1":
            continue
        gaps = [(steps, abs(ret - ret1)) for (_, steps, ret), (_, _, ret1) in zip(r["curve"], ref, strict=False)]
        apart = next((steps for steps, gap in gaps if gap > 1e-3), None)
        lines.append(f"{key}: greedy curve equal to one process's within 1e-3 at every evaluation" if apart is None else
                     f"{key}: greedy curve apart from one process's (by over 1e-3) from {apart:,} env steps on "
                     f"(largest gap {max(g for _, g in gaps):.2f})")
    steps = {r["steps_to_target"] for r in runs.values()}
    if len(steps) == 1 and None not in steps:
        lines.append(f"every run reached {target:g} at the same env step, {steps.pop():,}")
    return lines


@register_kind("mappo_scale_out", ScaleOutConfig, axis="training",
               description="MAPPO on 1/2/4 learner processes (ring all-reduce) vs 1 process with 1/2/4 threads")
def run_scale_out(cfg: ScaleOutConfig, ctx: RunContext) -> dict[str, Any]:
    plan = _plan(cfg)
    runs: dict[str, dict[str, Any]] = dict(ctx.resume_state or {})
    for how, n in ctx.progress(plan, description="mappo_scale_out"):
        key = f"{how}/{n}"
        if key in runs:
            continue
        r = measure(cfg, how, n)
        # The learning itself is deterministic (metrics); every wall-clock number is a timing.
        for seconds, steps, ret in r["curve"]:
            ctx.log(how=how, n=n, env_steps=steps, greedy_return=ret)
            ctx.log_timing(how=how, n=n, env_steps=steps, seconds=seconds, greedy_return=ret)
        ctx.log_timing(how=how, n=n, env_steps_per_s=r["env_steps_per_s"], seconds_to_target=r["seconds_to_target"],
                       steps_to_target=r["steps_to_target"], compute_s_per_update=r["compute_s_per_update"],
                       ring_s_per_update=r["ring_s_per_update"], load_average=r["load_average"])
        runs[key] = r
        ctx.save_checkpoint(runs)
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    lines = to_target(runs, cfg.target_return) + verdict(runs, cores, load)
    for line in lines:
        ctx.info(line)
    _figure(ctx, cfg, runs, cores, load)
    summary: dict[str, Any] = {"cores": cores, "load_average": round(load, 2), "target_return": cfg.target_return}
    for key, r in runs.items():
        k = key.replace("/", "_")
        summary[f"{k}_env_steps_per_s"] = round(r["env_steps_per_s"], 1)
        summary[f"{k}_seconds_to_target"] = None if r["seconds_to_target"] is None else round(r["seconds_to_target"], 2)
        summary[f"{k}_steps_to_target"] = r["steps_to_target"]
        summary[f"{k}_final_return"] = r["final_return"]
        if "load_average" in r:  # absent in a run resumed from an older checkpoint
            summary[f"{k}_load_average"] = round(r["load_average"], 2)
        if r["how"] == "workers" and r["n"] > 1:
            summary[f"{k}_ring_s_per_update"] = round(r["ring_s_per_update"], 4)
            summary[f"{k}_compute_s_per_update"] = round(r["compute_s_per_update"], 4)
            summary[f"{k}_ring_alone_s_per_update"] = round(r["ring_alone_s_per_update"], 4)
    summary["verdict"] = lines
    return summary


def _figure(ctx: RunContext, cfg: ScaleOutConfig, runs: dict[str, dict[str, Any]], cores: int, load: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    base = runs["workers/1"]["env_steps_per_s"]
    for how, marker, label in (("workers", "o", "learner processes (scale-out)"), ("threads", "s", "threads (scale-up)")):
        pts = sorted((r["n"], r["env_steps_per_s"]) for r in runs.values() if r["how"] == how or r["n"] == 1)
        a1.plot(*zip(*pts, strict=True), marker=marker, label=label)
    ns = sorted({r["n"] for r in runs.values()})
    a1.plot(ns, [base * n for n in ns], "k:", label="ideal (N x one process)")
    a1.axvline(cores, color="grey", ls="--", lw=1, label=f"{cores} cores (load {load:.1f})")
    a1.set(xlabel="N", ylabel="env-steps / s (evaluations off the clock)", title="Throughput, this machine", xticks=ns)
    a1.legend(fontsize=8)
    for key, r in runs.items():
        if r["curve"]:
            t, _, ret = zip(*r["curve"], strict=True)
            a2.plot(t, ret, marker=".", label=key)
    a2.axhline(cfg.target_return, color="grey", ls=":", label=f"target {cfg.target_return:g}")
    a2.set(xlabel="wall time (s)", ylabel="greedy per-agent return", title="Return against time")
    a2.legend(fontsize=8)
    bars = [r for r in runs.values() if r["how"] == "workers"]
    names = [f"{r['n']} learner{'s' if r['n'] > 1 else ''}" for r in bars]
    comp = [r["compute_s_per_update"] for r in bars]
    ring = [r["ring_s_per_update"] for r in bars]
    a3.bar(names, comp, label="own compute")
    a3.bar(names, ring, bottom=comp, label="ring all-reduce (incl. waiting)")
    alone = [(name, c + r["ring_alone_s_per_update"]) for name, c, r in zip(names, comp, bars, strict=True)
             if r["ring_alone_s_per_update"] is not None]
    if alone:
        a3.scatter(*zip(*alone, strict=True), color="k", marker="_", s=600, zorder=3, label="compute + the ring alone")
    a3.set(ylabel="seconds per update", title="Where a learner's update goes")
    a3.legend(fontsize=8)
    ctx.save_figure(fig, "mappo_scale_out")
