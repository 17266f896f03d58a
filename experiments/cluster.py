"""Experiment kinds of the cluster axis: gang scheduling simulated, and placed on Ray."""

from __future__ import annotations

import collections
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from experiments import ExperimentConfig, RunContext, register_kind


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class GangConfig(ExperimentConfig):
    """Greedy per-worker placement vs all-or-nothing gang vs rack-aware packing."""

    racks: int = Field(4, ge=1, le=64, description="Racks.")
    nodes_per_rack: int = Field(4, ge=1, le=64, description="Nodes per rack.")
    slots_per_node: int = Field(4, ge=1, le=64, description="Worker slots per node.")
    jobs: int = Field(100, ge=1, le=100_000, description="Jobs per trial.")
    arrival_rates: list[float] = Field([0.2, 0.5, 1.0, 2.0], min_length=1, description="Jobs per time unit (each > 0).")
    trials: int = Field(3, ge=1, le=100, description="Workloads per arrival rate (seeds seed, seed+1, ...).")
    worker_choices: list[int] = Field([1, 2, 4, 8, 16, 32], min_length=1, description="Gang sizes.")
    mean_duration: float = Field(10.0, gt=0, description="Mean job duration (exponential).")
    cross_rack_slowdown: float = Field(0.5, ge=0, description="Extra duration per extra rack spanned.")
    worker_launch_interval: float = Field(0.05, ge=0, description="Greedy: delay between a job's worker requests.")

    @field_validator("arrival_rates")
    @classmethod
    def _rates_positive(cls, v: list[float]) -> list[float]:
        if any(r <= 0 for r in v):
            raise ValueError(f"every arrival rate must be > 0, got {v}")
        return v

    @field_validator("worker_choices")
    @classmethod
    def _gangs_fit(cls, v: list[int], info: ValidationInfo) -> list[int]:
        d = info.data
        if all(k in d for k in ("racks", "nodes_per_rack", "slots_per_node")):
            total = d["racks"] * d["nodes_per_rack"] * d["slots_per_node"]
            bad = [w for w in v if not 1 <= w <= total]
            if bad:
                raise ValueError(f"gang sizes {bad} are outside [1, racks*nodes_per_rack*slots_per_node = {total}]")
        return v


@register_kind("gang_scheduling", GangConfig, axis="cluster",
               description="Discrete-event cluster: greedy placement deadlocks, gang and rack-aware scheduling do not")
def run_gang(cfg: GangConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.cluster import gang as G
    from envs.api import Agent, Scheduler

    cluster = G.ClusterSpec(cfg.racks, cfg.nodes_per_rack, cfg.slots_per_node)
    # One scheduling agent per policy; every workload goes through its Scheduler.
    schedulers = {p: Agent(f"scheduler/{p}", capabilities=[G.GangScheduler(
        cluster, p, cross_rack_slowdown=cfg.cross_rack_slowdown, worker_launch_interval=cfg.worker_launch_interval)])
        for p in G.POLICIES}

    # The two-job picture first: greedy holds 3+3 of 6 slots forever.
    ex_jobs, ex_cluster = G.deadlock_example()
    example = {p: Agent(f"example/{p}", capabilities=[G.GangScheduler(ex_cluster, p)]).get(Scheduler).schedule(ex_jobs)
               for p in G.POLICIES}
    for p, r in example.items():
        ctx.log(case="two_gangs_on_6_slots", policy=p, deadlocked=r.deadlocked, completed=len(r.completed),
                end_time=r.end_time)

    rows: list[dict[str, Any]] = []
    timelines: dict[str, Any] = {}
    t0 = time.perf_counter()
    for rate in ctx.progress(cfg.arrival_rates, description="gang_scheduling"):
        for trial in range(cfg.trials):
            jobs = G.generate_jobs(cfg.jobs, cluster, arrival_rate=rate, worker_choices=cfg.worker_choices,
                                   mean_duration=cfg.mean_duration, seed=cfg.seed + trial)
            results = {p: agent.get(Scheduler).schedule(jobs) for p, agent in schedulers.items()}
            # A deadlocked cluster does no more work, ever: its utilization is measured over the
            # longest run of this workload, not over its own short life.
            window = max(r.end_time for r in results.values())
            for p, r in results.items():
                row = {"arrival_rate": rate, "trial": trial, "policy": p, "deadlocked": r.deadlocked,
                       "completed": len(r.completed), "jobs": cfg.jobs,
                       "utilization": r.utilization(window if r.deadlocked else None),
                       "goodput": r.goodput(window if r.deadlocked else None),
                       "held_idle": r.held_idle_fraction(window if r.deadlocked else None),
                       "mean_wait": r.mean_wait, "mean_jct": r.mean_jct,
                       "mean_racks_spanned": r.mean_racks_spanned, "makespan": r.end_time}
                ctx.log(**row)
                rows.append(row)
            if trial == 0:
                timelines[rate] = results
    ctx.log_timing(seconds=time.perf_counter() - t0, simulations=len(rows))

    plt = _plt()
    colors = {"greedy": "tab:red", "gang": "tab:blue", "rack_aware": "tab:green"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    ax = axes[0, 0]
    for p, r in example.items():
        t = [e[0] for e in r.timeline]
        ax.step(t, [e[1] for e in r.timeline], where="post", color=colors[p], label=f"{p}: busy",
                lw=3 if p == "gang" else 1.5)
        ax.step(t, [e[2] for e in r.timeline], where="post", color=colors[p], ls=":", label=f"{p}: held idle")
    ax.set(xlabel="time", ylabel="slots (of 6)", title="two 4-worker gangs on 6 slots")
    ax.annotate("greedy: deadlock", (example["greedy"].end_time, 6), xytext=(2, 5.2),
                arrowprops={"arrowstyle": "->"}, fontsize=8)
    ax.legend(fontsize=7)
    heavy = max(timelines)
    ax = axes[0, 1]
    for p, r in timelines[heavy].items():
        t = [e[0] for e in r.timeline]
        ax.step(t, [e[1] / cluster.total_slots for e in r.timeline], where="post", color=colors[p], lw=0.8,
                label=f"{p}{' (deadlock)' if r.deadlocked else ''}")
    ax.set(xlabel="time", ylabel="busy fraction of slots", title=f"arrival rate {heavy}, trial 0")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    rates = sorted(cfg.arrival_rates)
    for p in G.POLICIES:
        ax.plot(rates, [np.mean([r["deadlocked"] for r in rows if r["policy"] == p and r["arrival_rate"] == a]) for a in rates],
                "o-", color=colors[p], label=p)
    ax.set(xlabel="arrival rate", ylabel="fraction of trials deadlocked", ylim=(-0.05, 1.05), title="deadlocks")
    ax.legend(fontsize=7)
    for ax, key, label in zip(axes[1], ("goodput", "mean_jct", "completed"),
                              ("goodput (useful slot-time / capacity)", "mean JCT (completed jobs only)",
                               "jobs completed"), strict=True):
        for p in G.POLICIES:
            ax.plot(rates, [np.nanmean([r[key] for r in rows if r["policy"] == p and r["arrival_rate"] == a]) for a in rates],
                    "o-", color=colors[p], label=p, lw=2.5 if p == "gang" else 1.5)
        ax.set(xlabel="arrival rate", ylabel=label)
        ax.legend(fontsize=7)
    fig.suptitle(f"Gang scheduling on {cfg.racks} racks x {cfg.nodes_per_rack} nodes x {cfg.slots_per_node} slots, "
                 f"{cfg.jobs} jobs per trial, {cfg.trials} trials per rate", fontsize=10)
    fig.tight_layout()
    ctx.save_figure(fig, "gang_scheduling")

    def mean(policy: str, key: str) -> float:
        return float(np.nanmean([r[key] for r in rows if r["policy"] == policy and r["arrival_rate"] == heavy]))

    return {
        "greedy_deadlocked_trials": sum(r["deadlocked"] for r in rows if r["policy"] == "greedy"),
        "gang_deadlocked_trials": sum(r["deadlocked"] for r in rows if r["policy"] != "greedy"),
        "trials": len(rows) // len(G.POLICIES),
        **{f"{p}_mean_jct_at_rate_{heavy}": mean(p, "mean_jct") for p in G.POLICIES},
        **{f"{p}_goodput_at_rate_{heavy}": mean(p, "goodput") for p in G.POLICIES},
        **{f"{p}_jobs_completed_at_rate_{heavy}": mean(p, "completed") for p in G.POLICIES},
    }


class RayPlacementConfig(ExperimentConfig):
    """Places one gang with each Ray placement strategy on a local multi-node Ray cluster."""

    num_nodes: int = Field(3, ge=1, le=8, description="Nodes of the local Ray cluster.")
    cpus_per_node: int = Field(2, ge=1, le=16, description="CPUs per node.")
    gang_size: int = Field(3, ge=1, description="Workers of the gang (one CPU bundle each).")
    strategies: list[Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]] = Field(
        ["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"], min_length=1, description="Strategies to try.")
    timeout_s: float = Field(3.0, gt=0, le=60, description="Seconds to wait for a group to be placed.")

    @field_validator("gang_size")
    @classmethod
    def _gang_fits(cls, v: int, info: ValidationInfo) -> int:
        d = info.data
        if "num_nodes" in d and "cpus_per_node" in d and v > d["num_nodes"] * d["cpus_per_node"]:
            raise ValueError(f"a gang of {v} is larger than the cluster (num_nodes*cpus_per_node = "
                             f"{d['num_nodes'] * d['cpus_per_node']} CPUs)")
        return v


@register_kind("gang_placement_ray", RayPlacementConfig, axis="cluster",
               description="Ray placement groups (STRICT_PACK, PACK, SPREAD) on a local multi-node cluster")
def run_ray_placement(cfg: RayPlacementConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.cluster import placement as P

    total = cfg.num_nodes * cfg.cpus_per_node

    import ray

    placed: dict[str, list[int]] = {}
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    with P.local_cluster(cfg.num_nodes, cfg.cpus_per_node) as cluster:
        ctx.log_timing(stage="start_cluster", seconds=time.perf_counter() - t0)
        names = list(cluster.node_names.values())
        for strategy in cfg.strategies:
            free_before = ray.available_resources().get("CPU", 0.0)
            res = None
            if not (strategy == "STRICT_SPREAD" and cfg.gang_size > cfg.num_nodes):
                res = P.reserve_gang([{"CPU": 1.0}] * cfg.gang_size, strategy, cluster=cluster, timeout_s=cfg.timeout_s)
            if res is None:
                free_after = _settled_cpus(ray, free_before)
                ctx.log(strategy=strategy, placed=False, reserved_nothing=free_after == free_before)
                placed[strategy] = [0] * len(names)
                continue
            try:
                ran_on = P.run_in_gang(res, cluster)
                counts = collections.Counter(res.bundle_nodes)
                placed[strategy] = [counts.get(n, 0) for n in names]
                ctx.log(strategy=strategy, placed=True, nodes_used=len(counts),
                        bundles_per_node_sorted=sorted(counts.values(), reverse=True),
                        tasks_ran_in_their_bundles=ran_on == res.bundle_nodes)
            finally:
                P.release(res)
        # A gang that fits the cluster's CPUs but no single node: STRICT_PACK reserves nothing.
        big = cfg.cpus_per_node + 1
        if big <= total:
            free_before = _settled_cpus(ray, float(total))
            res = P.reserve_gang([{"CPU": 1.0}] * big, "STRICT_PACK", cluster=cluster, timeout_s=cfg.timeout_s)
            ok = res is None and _settled_cpus(ray, free_before) == free_before
            ctx.log(strategy=f"STRICT_PACK x{big} (larger than a node)", placed=res is not None, reserved_nothing=ok)
            out["oversized_strict_pack_reserved_nothing"] = ok
            placed[f"STRICT_PACK x{big}"] = [0] * len(names)
            if res is not None:
                P.release(res)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 0.7 * len(placed) + 1.5))
    grid = np.array([placed[s] for s in placed])
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, cfg.cpus_per_node))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            dark = grid[i, j] > cfg.cpus_per_node / 2
            ax.text(j, i, str(grid[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set(xticks=range(len(names)), xticklabels=names, yticks=range(len(placed)), yticklabels=list(placed),
           title=f"{cfg.gang_size} one-CPU bundles on {cfg.num_nodes} nodes x {cfg.cpus_per_node} CPUs\n"
                 f"(STRICT_PACK x{cfg.cpus_per_node + 1}: larger than a node, reserves nothing)")
    ctx.save_figure(fig, "placement")
    for s in cfg.strategies:
        out[f"{s}_nodes_used"] = int(np.count_nonzero(placed[s]))
    return out


def _settled_cpus(ray: Any, expect: float, within_s: float = 5.0) -> float:
    """Free CPUs once they reach ``expect`` or ``within_s`` passes (resource reports lag)."""
    deadline = time.monotonic() + within_s
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free == expect or time.monotonic() > deadline:
            return free
        time.sleep(0.1)
