"""Experiment kinds of the training axis: ring all-reduce, ZeRO memory, parameter server, scaling.

Each kind launches real local process groups (gloo on 127.0.0.1) through
:func:`capabilities.training.launch.launch`. Deterministic results (bytes, equality checks,
losses of synchronous runs) go to metrics.jsonl; every wall-clock number goes to timings.jsonl.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from capabilities.training.param_server.config import PSConfig
from experiments import ExperimentConfig, RunContext, UserError, register_kind


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sig(x: float, digits: int = 6) -> float:
    """Rounds to ``digits`` significant digits (float sums may differ in the last bits)."""
    return float(f"{x:.{digits}g}")


# ============================================================================================
# Ring all-reduce


class RingConfig(ExperimentConfig):
    """Ring, tree and naive all-reduce against gloo's all_reduce: equality, bytes, time."""

    world_sizes: list[int] = Field([2, 3, 4], min_length=1, max_length=20, description="Process counts to run (each 2..8).")
    sizes: list[int] = Field([1000, 100003, 1000000], min_length=1, max_length=50, description="Tensor sizes in float32 elements (each >= 1).")
    algorithms: list[Literal["ring", "tree", "naive"]] = Field(["ring", "tree", "naive"], min_length=1,
                                                              description="All-reduce algorithms to compare.")
    repeats: int = Field(3, ge=1, le=50, description="Timed repeats per case (best is kept).")

    @field_validator("world_sizes")
    @classmethod
    def _ws(cls, v: list[int]) -> list[int]:
        if any(not 2 <= n <= 8 for n in v):
            raise ValueError(f"each world size must be in 2..8, got {v}")
        return v

    @field_validator("sizes")
    @classmethod
    def _sz(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"each size must be >= 1, got {v}")
        if any(n > 2**26 for n in v):  # 256 MiB of float32 per rank, a few copies, up to 8 ranks
            raise ValueError(f"each size must be <= {2**26} elements (memory), got {v}")
        return v


@register_kind("ring_allreduce", RingConfig, axis="training",
               description="Ring all-reduce on send/recv vs gloo: equal sums, 2(N-1)/N bytes per rank")
def run_ring(cfg: RingConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.training.launch import launch
    from capabilities.training.ring_allreduce import ring_bytes
    from capabilities.training.workers import allreduce_worker

    done: dict[int, list[dict[str, Any]]] = dict(ctx.resume_state or {})
    for n in ctx.progress(cfg.world_sizes, description="ring_allreduce"):
        if n in done:
            continue
        outs = launch(allreduce_worker, n, cfg.sizes, list(cfg.algorithms), cfg.repeats, timeout_s=300)
        for numel in cfg.sizes:
            nbytes = 4 * numel
            gloo_s = max(o[f"gloo/{numel}"]["seconds"] for o in outs)
            for algo in cfg.algorithms:
                rows = [o[f"{algo}/{numel}"] for o in outs]
                sent = [r["bytes"] for r in rows]
                rec = {"world_size": n, "numel": numel, "algorithm": algo,
                       "equal_to_gloo": all(r["equal"] for r in rows),
                       "max_bytes_per_rank": max(sent), "total_bytes": sum(sent),
                       "max_bytes_over_tensor": max(sent) / nbytes,
                       "ring_formula_over_tensor": 2 * (n - 1) / n}
                if algo == "ring":
                    rec["ring_bytes_exact"] = sent == [ring_bytes(numel, 4, n, r) for r in range(n)]
                ctx.log(**rec)
                seconds = max(r["seconds"] for r in rows)
                ctx.log_timing(world_size=n, numel=numel, algorithm=algo, seconds=seconds, gloo_seconds=gloo_s)
                done.setdefault(n, []).append({**rec, "seconds": seconds, "gloo_seconds": gloo_s})
        ctx.save_checkpoint(done)

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    big = max(cfg.sizes)
    for algo in cfg.algorithms:
        pts = [(n, r["max_bytes_over_tensor"]) for n in cfg.world_sizes for r in done[n]
               if r["algorithm"] == algo and r["numel"] == big]
        a1.plot(*zip(*pts, strict=True), marker="o", label=algo)
    ns = sorted(cfg.world_sizes)
    a1.plot(ns, [2 * (n - 1) / n for n in ns], "k--", label="2(N-1)/N")
    a1.set(xlabel="processes N", ylabel="max bytes sent by one rank / tensor bytes",
           title=f"Bytes per rank ({big} float32)")
    a1.legend()
    nmax = max(cfg.world_sizes)
    rows = [r for r in done[nmax]]
    for algo in cfg.algorithms:
        pts = sorted((r["numel"] * 4 / 2**20, r["seconds"] * 1e3) for r in rows if r["algorithm"] == algo)
        a2.loglog(*zip(*pts, strict=True), marker="o", label=algo)
    pts = sorted({(r["numel"] * 4 / 2**20, r["gloo_seconds"] * 1e3) for r in rows})
    a2.loglog(*zip(*pts, strict=True), "k--", marker="s", label="gloo all_reduce")
    a2.set(xlabel="tensor MB", ylabel="ms (best of repeats)", title=f"Time at N={nmax} (wall clock, this machine)")
    a2.legend()
    ctx.save_figure(fig, "ring_allreduce")
    ring_big = [r for r in done[nmax] if r["algorithm"] == "ring" and r["numel"] == big]
    summary: dict[str, Any] = {"all_equal_to_gloo": all(r["equal_to_gloo"] for v in done.values() for r in v)}
    if ring_big:
        summary["ring_bytes_over_tensor_at_max_N"] = ring_big[0]["max_bytes_over_tensor"]
        summary["ring_over_gloo_throughput_largest"] = ring_big[0]["gloo_seconds"] / ring_big[0]["seconds"]
    return summary


# ============================================================================================
# ZeRO memory


class ZeroConfig(ExperimentConfig):
    """ZeRO 1-3 model-state bytes per rank vs the paper's formulas and FSDP2, and equality with DP."""

    world_size: int = Field(4, ge=2, le=8, description="Processes N.")
    widths: list[int] = Field([64, 128, 128, 16], min_length=2, max_length=32, description="MLP layer widths (each 1..8192).")
    steps: int = Field(3, ge=1, le=100, description="Adam steps.")
    batch: int = Field(8, ge=1, le=65_536, description="Examples per rank per step.")
    dtype: Literal["float32", "float64"] = Field("float32", description="Parameter dtype.")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate.")
    fsdp: bool = Field(True, description="Also run FSDP2 fully_shard and ZeroRedundancyOptimizer.")

    @field_validator("widths")
    @classmethod
    def _w(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"each width must be >= 1, got {v}")
        if any(n > 8192 for n in v):
            raise ValueError(f"each width must be <= 8192 (memory), got {v}")
        return v


@register_kind("zero_memory", ZeroConfig, axis="training",
               description="ZeRO stages 1-3: bytes per rank vs the paper's formulas and FSDP2; equal to plain DP")
def run_zero(cfg: ZeroConfig, ctx: RunContext) -> dict[str, Any]:
    from capabilities.training.launch import launch
    from capabilities.training.workers import ZeroSpec, zero_worker
    from capabilities.training.zero import zero_formula_bytes

    spec = ZeroSpec(widths=list(cfg.widths), steps=cfg.steps, batch=cfg.batch, dtype=cfg.dtype, lr=cfg.lr,
                    seed=cfg.seed, fsdp=cfg.fsdp)
    outs = launch(zero_worker, cfg.world_size, spec, timeout_s=300)
    n, p = cfg.world_size, outs[0]["num_params"]
    e = 4 if cfg.dtype == "float32" else 8
    stage_of = {"dp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "torch_zero1": 1, "fsdp2": 3}
    results = {}
    for method in [m for m in stage_of if m in outs[0]]:
        # The largest rank is the one that runs out of memory first.
        mem = {k: max(o[method]["memory"][k] for o in outs) for k in ("params", "grads", "optimizer", "total")}
        formula = zero_formula_bytes(p, n, stage_of[method], e)
        diff = max(o[method]["diff"] for o in outs)
        results[method] = (mem, formula, diff)
        ctx.log(method=method, stage=stage_of[method], num_params=p, world_size=n, K=2 * e,
                **{f"measured_{k}": v for k, v in mem.items()},
                **{f"formula_{k}": round(v, 3) for k, v in formula.items()},
                measured_over_formula=round(mem["total"] / formula["total"], 6),
                max_param_diff_vs_dp=diff, moved_from_init=outs[0]["moved"] > 0)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(results)
    bottom = [0.0] * len(names)
    for kind, color in (("params", "#4c72b0"), ("grads", "#dd8452"), ("optimizer", "#55a868")):
        vals = [results[m][0][kind] / 1024 for m in names]
        ax.bar(names, vals, bottom=bottom, color=color, label=f"measured {kind}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.scatter(names, [results[m][1]["total"] / 1024 for m in names], color="k", marker="_", s=900,
               zorder=3, label="ZeRO formula")
    ax.set(ylabel="KiB of model state per rank (max over ranks)",
           title=f"ZeRO, P={p} {cfg.dtype} params, N={n}, Adam K={2 * e}")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "zero_memory")
    summary = {f"{m}_bytes_per_rank": r[0]["total"] for m, r in results.items()}
    summary.update({f"{m}_over_formula": round(r[0]["total"] / r[1]["total"], 4) for m, r in results.items()})
    summary["max_param_diff_vs_dp"] = max(r[2] for r in results.values())
    return summary


# ============================================================================================
# Parameter server with a straggler


def _ps_field(name: str) -> Any:
    """PSConfig's field ``name`` (default, bounds, description): the run's settings have one source."""
    return copy.deepcopy(PSConfig.model_fields[name])


class PSExperimentConfig(ExperimentConfig):
    """BSP, SSP and async parameter servers with one slow worker: loss vs wall time."""

    modes: list[Literal["bsp", "ssp", "async"]] = Field(["bsp", "ssp", "async"], min_length=1,
                                                       description="Consistency modes to run.")
    staleness: int = _ps_field("staleness")
    num_servers: int = _ps_field("num_servers")
    num_workers: int = _ps_field("num_workers")
    steps: int = _ps_field("steps")
    lr: float = _ps_field("lr")
    straggler_delay_s: float = _ps_field("straggler_delay_s")
    dim: int = Field(16, ge=1, le=1_000_000, description="Parameters of the least-squares model.")
    examples_per_worker: int = Field(64, ge=1, le=100_000, description="Rows of data per worker.")
    target_loss: float = Field(0.1, gt=0, description="Loss whose first crossing is the time-to-loss.")

    @model_validator(mode="after")
    def _shards_fit(self) -> PSExperimentConfig:
        if self.num_servers > self.dim:
            raise ValueError(f"num_servers = {self.num_servers} exceeds dim = {self.dim} (each server needs a parameter)")
        if self.dim * self.examples_per_worker * self.num_workers > 2**27:
            raise ValueError(f"dim * examples_per_worker * num_workers = "
                             f"{self.dim * self.examples_per_worker * self.num_workers} exceeds {2**27} (memory)")
        return self


@register_kind("ps_straggler", PSExperimentConfig, axis="training",
               description="Parameter server push-pull: BSP = sync SGD, SSP bound holds, loss vs wall time with a straggler")
def run_ps(cfg: PSExperimentConfig, ctx: RunContext) -> dict[str, Any]:
    import torch

    from capabilities.training.param_server import (
        LeastSquares,
        run_parameter_server,
        sync_sgd_update,
    )

    if cfg.num_servers > cfg.dim:
        raise UserError(f"config key 'num_servers' = {cfg.num_servers} exceeds 'dim' = {cfg.dim} (each server needs a parameter)")
    task = LeastSquares(dim=cfg.dim, examples_per_worker=cfg.examples_per_worker, seed=cfg.seed)
    results: dict[str, dict[str, Any]] = dict(ctx.resume_state or {})
    for mode in ctx.progress(cfg.modes, description="ps_straggler"):
        if mode in results:
            continue
        pcfg = PSConfig(mode=mode, staleness=cfg.staleness, num_servers=cfg.num_servers,
                        num_workers=cfg.num_workers, steps=cfg.steps, lr=cfg.lr,
                        straggler_delay_s=cfg.straggler_delay_s, timeout_s=120.0)
        res = run_parameter_server(pcfg, task)
        rec: dict[str, Any] = {"mode": mode, "updates": len(res.curve) - 1,
                               "final_loss": _sig(res.curve[-1][1])}
        if mode == "bsp":
            data = [task.data(w, cfg.num_workers) for w in range(cfg.num_workers)]
            p = task.init()
            for clock in range(cfg.steps):
                p = sync_sgd_update(p, [task.grad(p, x, y) for x, y in data], cfg.lr)
                ctx.log(mode="bsp", clock=clock + 1, loss=task.loss(p, torch.cat([d[0] for d in data]),
                                                                    torch.cat([d[1] for d in data])))
            rec["equals_sync_sgd"] = bool(torch.equal(p, res.params))
            rec["max_pull_gap"] = max(res.pull_gaps)
        if mode == "ssp":
            rec["staleness_bound"] = cfg.staleness
            rec["bound_held"] = max(res.pull_gaps) <= cfg.staleness
        ctx.log(**{k: v for k, v in rec.items() if k not in ("final_loss", "updates") or mode == "bsp"})
        hit = next((t for t, loss in res.curve if loss <= cfg.target_loss), None)
        for t, loss in res.curve:
            ctx.log_timing(mode=mode, seconds=t, loss=loss)
        results[mode] = {**rec, "curve": res.curve, "time_to_target": hit, "max_gap": max(res.pull_gaps)}
        ctx.save_checkpoint(results)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, r in results.items():
        t, loss = zip(*r["curve"], strict=True)
        label = f"{mode}" + (f" (s={cfg.staleness})" if mode == "ssp" else "")
        ax.semilogy(t, loss, label=f"{label}: {len(t) - 1} server updates, max gap {r['max_gap']}")
    ax.axhline(cfg.target_loss, color="grey", ls=":", label="target loss")
    ax.set(xlabel="wall time (s)", ylabel="loss of the servers' model (all data)",
           title=f"Parameter server, {cfg.num_workers} workers (worker 0 +{cfg.straggler_delay_s}s/iter), "
                 f"{cfg.num_servers} shards")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "loss_vs_time")
    summary: dict[str, Any] = {}
    for mode, r in results.items():
        summary[f"{mode}_final_loss"] = r["final_loss"]
        summary[f"{mode}_seconds_to_target"] = r["time_to_target"]
        summary[f"{mode}_max_pull_gap"] = r["max_gap"]
    if "bsp" in results:
        summary["bsp_equals_sync_sgd"] = results["bsp"]["equals_sync_sgd"]
    if "ssp" in results:
        summary["ssp_bound_held"] = results["ssp"]["bound_held"]
    return summary


# ============================================================================================
# Scale-out vs scale-up


class ScalingConfig(ExperimentConfig):
    """Data-parallel SGD on N processes vs one process with N threads: throughput, time-to-loss."""

    counts: list[int] = Field([1, 2, 4], min_length=1, description="N: processes (scale-out) and threads (scale-up), each 1..8.")
    widths: list[int] = Field([64, 256, 256, 1], min_length=2, max_length=32, description="MLP layer widths (each 1..8192).")
    global_batch: int = Field(1024, ge=8, le=2**20, description="Examples per step, split over processes.")
    steps: int = Field(20, ge=1, le=10000, description="SGD steps.")
    lr: float = Field(0.05, gt=0, description="SGD learning rate.")
    target_loss: float = Field(0.4, gt=0, description="Loss whose first crossing is the time-to-loss.")

    @field_validator("counts")
    @classmethod
    def _c(cls, v: list[int]) -> list[int]:
        if any(not 1 <= n <= 8 for n in v):
            raise ValueError(f"each count must be in 1..8, got {v}")
        return v

    @model_validator(mode="after")
    def _fits(self) -> ScalingConfig:
        if any(not 1 <= n <= 8192 for n in self.widths):
            raise ValueError(f"each of widths must be in 1..8192, got {self.widths}")
        if max(self.counts) > self.global_batch:
            raise ValueError(f"global_batch = {self.global_batch} is smaller than the largest count {max(self.counts)}")
        return self


@register_kind("scaling", ScalingConfig, axis="training",
               description="Scale-out (N processes, ring all-reduce) vs scale-up (N threads): same losses, throughput")
def run_scaling(cfg: ScalingConfig, ctx: RunContext) -> dict[str, Any]:
    import os

    from capabilities.training.launch import launch
    from capabilities.training.workers import ScalingSpec, scaling_worker

    spec = ScalingSpec(widths=list(cfg.widths), global_batch=cfg.global_batch, steps=cfg.steps, lr=cfg.lr,
                       seed=cfg.seed, target_loss=cfg.target_loss)
    if max(cfg.counts) > cfg.global_batch:
        raise UserError(f"config key 'global_batch' = {cfg.global_batch} is smaller than the largest count {max(cfg.counts)}")
    runs: dict[str, dict[str, Any]] = dict(ctx.resume_state or {})
    plan = [("processes", n) for n in cfg.counts] + [("threads", n) for n in cfg.counts]
    for how, n in ctx.progress(plan, description="scaling"):
        key = f"{how}/{n}"
        if key in runs:
            continue
        if how == "processes":
            out = launch(scaling_worker, n, spec, timeout_s=600, threads=1)[0]
        else:
            out = launch(scaling_worker, 1, spec, timeout_s=600, threads=n)[0]
        losses, times = out["losses"], out["times"]
        hit = next((i for i, loss in enumerate(losses) if loss <= cfg.target_loss), None)
        rec = {"how": how, "n": n, "losses": [_sig(v) for v in losses],
               "steps_to_target": None if hit is None else hit + 1}
        ctx.log(**rec)
        # The median step resists the other tenants of a shared machine better than the mean.
        durations = sorted(b - a for a, b in zip([0.0, *times[:-1]], times, strict=True))
        thr = cfg.global_batch / durations[len(durations) // 2]
        ttl = None if hit is None else times[hit]
        ctx.log_timing(how=how, n=n, samples_per_s=thr, seconds_to_target=ttl, step_times=times)
        runs[key] = {**rec, "times": times, "throughput": thr, "time_to_target": ttl}
        ctx.save_checkpoint(runs)

    ref = runs[f"processes/{cfg.counts[0]}"]["losses"]
    same = all(r["losses"] == ref for r in runs.values())
    ctx.log(all_runs_same_losses_6_digits=same)
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for how, marker in (("processes", "o"), ("threads", "s")):
        pts = [(n, runs[f"{how}/{n}"]["throughput"]) for n in cfg.counts]
        a1.plot(*zip(*pts, strict=True), marker=marker, label=f"{how} (scale-{'out' if how == 'processes' else 'up'})")
    a1.axvline(os.cpu_count() or 1, color="grey", ls=":", label=f"{os.cpu_count()} cores here")
    a1.set(xlabel="N", ylabel="samples / s (median step)", title="Throughput (wall clock, this machine)")
    a1.legend(fontsize=8)
    for key, r in runs.items():
        a2.plot(r["times"], r["losses"], label=key)
    a2.axhline(cfg.target_loss, color="grey", ls=":", label="target")
    a2.set(xlabel="wall time (s)", ylabel="training loss", title="Same loss curve, different speed")
    a2.legend(fontsize=8)
    ctx.save_figure(fig, "scaling")
    summary: dict[str, Any] = {"same_losses": same}
    for key, r in runs.items():
        summary[f"{key.replace('/', '_')}_samples_per_s"] = round(r["throughput"], 1)
        summary[f"{key.replace('/', '_')}_seconds_to_target"] = r["time_to_target"]
    return summary
