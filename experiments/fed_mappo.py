"""Experiment kind ``fed_mappo``: federated CTDE under secure aggregation, beside its references.

Four ways to spend the same environment steps on the sites' simple_spread worlds (each site's
own ``local_ratio`` and landmark region, see :mod:`federated.fed_mappo`):

* (a) centralized: one MAPPO on the union of the sites' environments (one batch holding every
  site's worlds, each with its own reward), the data pooled in one place;
* (b) each site alone: the same MAPPO on its own environments, no exchange;
* (c) federated, plain: sites train locally, the server averages the actors by environment steps;
* (d) federated, secure: the same through secure aggregation (the server sees only the sum).

All greedy policies are scored on the sites' pooled evaluation (the mean over sites of the
per-agent return on that site's environment, the same starting worlds for every policy).
Figures: returns against environment steps; bytes and wall time per federated round. The
secure run's policy is saved in ``policy/`` (``agora play RUN_DIR``).

The federated runs checkpoint every round and continue on ``resume``; the reference runs (a)
and (b) are checkpointed when each finishes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from experiments import ExperimentConfig, RunContext, register_kind
from federated.fed_mappo import (
    FedMAPPOSettings,
    PooledEvaluator,
    initial_weights,
    load_shared,
    shared_weights,
    simulate,
    train_site,
)
from federated.secure_aggregation import SecAggParams
from federated.settings import field_of
from marl.mappo import MAPPO


class FedMAPPOConfig(ExperimentConfig):
    """Federated MAPPO (plain and secure) against centralized MAPPO and each site alone."""

    num_sites: int = Field(2, ge=2, le=64, description="Sites (Flower clients); secure aggregation needs 2 or more.")
    rounds: int = field_of(FedMAPPOSettings, "num_server_rounds")
    local_steps: int = field_of(FedMAPPOSettings, "local_steps")
    train: dict[str, Any] = Field(default_factory=dict,
                                  description="MAPPO hyperparameters (marl.mappo.MAPPOConfig fields) of every site; "
                                              "env and budget are set by the run.")
    ratio_low: float = field_of(FedMAPPOSettings, "ratio_low")
    ratio_high: float = field_of(FedMAPPOSettings, "ratio_high")
    landmark_shift: float = field_of(FedMAPPOSettings, "landmark_shift")
    share_critic: bool = field_of(FedMAPPOSettings, "share_critic")
    eval_episodes: int = Field(32, ge=1, le=100_000, description="Greedy episodes per site environment per evaluation.")
    eval_seed: int = field_of(FedMAPPOSettings, "eval_seed")
    clip: float = field_of(SecAggParams, "clip")
    bits: int = Field(64, ge=1, le=64,
                      description="Secure sums live modulo 2**bits. 64 (with the power-of-two scale and every site's "
                                  "weight exactly 1) makes the secure average Flower FedAvg's float32 mean bit for bit "
                                  "at 2 sites, so the secure curve is the plain one; fewer bits round to a coarser step.")
    num_cpus: int = Field(2, ge=1, le=256, description="CPUs for Flower's simulation engine (Ray).")
    round_timeout: float = field_of(FedMAPPOSettings, "round_timeout")

    @model_validator(mode="after")
    def _settings_valid(self) -> FedMAPPOConfig:
        self.settings("secure", "", "")  # every run setting checked before a run directory exists
        return self

    def settings(self, aggregation: str, checkpoint_dir: str, site_dir: str) -> FedMAPPOSettings:
        """The Flower run's settings for ``aggregation`` (plain or secure)."""
        train = json.dumps(self.train)
        probe = FedMAPPOSettings.create(num_sites=self.num_sites, local_steps=self.local_steps, train=train)
        # One site's weight is its steps per round, so every weight is exactly 1 in the sum.
        secagg = SecAggParams(clip=self.clip, bits=self.bits, max_weight=probe.steps_per_round, seed=self.seed % 2**31)
        return FedMAPPOSettings.create(
            num_server_rounds=self.rounds, num_sites=self.num_sites, local_steps=self.local_steps, train=train,
            ratio_low=self.ratio_low, ratio_high=self.ratio_high, landmark_shift=self.landmark_shift,
            share_critic=self.share_critic,
            aggregation=aggregation, seed=self.seed % 2**31, eval_episodes=self.eval_episodes,
            eval_seed=self.eval_seed, round_timeout=self.round_timeout, checkpoint_dir=checkpoint_dir,
            resume=True, site_dir=site_dir, secagg=secagg)


def _alone(settings: FedMAPPOSettings, site: int, evaluate: PooledEvaluator, site_dir: str) -> list[dict[str, Any]]:
    """Site ``site`` training alone for as many rounds, from the same initial actor: its curve."""
    weights = initial_weights(settings)
    curve = [{"env_steps": 0, **evaluate(weights)}]
    for r in range(1, settings.num_server_rounds + 1):
        weights, _ = train_site(settings, site, r, weights, site_dir)
        curve.append({"env_steps": r * settings.steps_per_round, **evaluate(weights)})
    return curve


def union_trainer(settings: FedMAPPOSettings) -> MAPPO:
    """One MAPPO on the union of the sites' environments: every site's worlds in one batch.

    The batch holds ``num_envs`` worlds per site; world ``b`` rewards with site ``b //
    num_envs``'s ``local_ratio`` (simple_spread's reward is linear in it, so a per-world
    column of ratios gives each world its site's reward) and places its landmarks in that
    site's range (per-world ``landmark_mid`` / ``landmark_half``).
    """
    cfg = settings.site_config(0)
    union = cfg.model_copy(update={"num_envs": cfg.num_envs * settings.num_sites,
                                   "num_minibatches": cfg.num_minibatches * settings.num_sites,
                                   "total_steps": cfg.total_steps * settings.num_sites})
    trainer = MAPPO(union, settings.seed)
    env, sites = trainer.env, range(settings.num_sites)

    def per_world(values: list[float], *shape: int) -> torch.Tensor:
        column = torch.tensor(values, dtype=env.dtype).repeat_interleave(cfg.num_envs)
        return column.reshape(-1, *shape).to(trainer.device)

    env.local_ratio = per_world([settings.local_ratio(s) for s in sites], 1)
    if settings.landmark_shift:
        # Each world draws its landmarks from its site's range: the batch starts over with them.
        env.landmark_mid = per_world([settings.landmark_offset(s) for s in sites], 1, 1)
        env.landmark_half = per_world([1.0 for _ in sites], 1, 1)
        trainer.obs = env.reset(seed=settings.seed)[0].to(trainer.dtype)
        trainer.state = env.state().to(trainer.dtype)
    load_shared(trainer, initial_weights(settings))
    return trainer


def _central(settings: FedMAPPOSettings, evaluate: PooledEvaluator) -> list[dict[str, Any]]:
    trainer = union_trainer(settings)
    curve = [{"env_steps": 0, **evaluate(shared_weights(trainer, False))}]
    for r in range(1, settings.num_server_rounds + 1):
        for _ in range(settings.iterations):
            trainer.train_iteration()
        curve.append({"env_steps": r * settings.num_sites * settings.steps_per_round,
                      **evaluate(shared_weights(trainer, False))})
    return curve


def _plot(ctx: RunContext, done: dict[str, Any], sites: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves = [("centralized (union of sites)", done["central"], "-"),
              ("federated, plain", done["plain"]["curve"], "-"),
              ("federated, secure", done["secure"]["curve"], "--")]
    curves += [(f"site {s} alone", done["alone"][s], ":") for s in range(sites)]
    for label, curve, style in curves:
        ax.plot([p["env_steps"] for p in curve], [p["return"] for p in curve], ls=style, marker="o", ms=3, label=label)
    ax.set(xlabel="environment steps (all sites together for federated and centralized)",
           ylabel="pooled greedy per-agent return", title=f"Federated MAPPO, {sites} sites of simple_spread")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.save_figure(fig, "returns_vs_steps")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for agg in ("plain", "secure"):
        rounds = [t["round"] for t in done[agg]["timing"]]
        axes[0].plot(rounds, [(t["bytes_out"] + t["bytes_in"]) / 1e3 for t in done[agg]["timing"]], marker="o",
                     label=agg)
        axes[1].plot(rounds, [t["round_seconds"] for t in done[agg]["timing"]], marker="o", label=agg)
    axes[0].set(xlabel="round", ylabel="kB through the server", title="bytes per round")
    axes[1].set(xlabel="round", ylabel="seconds", title="wall time per round")
    for a in axes:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    ctx.save_figure(fig, "bytes_wall_per_round")


@register_kind("fed_mappo", FedMAPPOConfig, axis="intelligence",
               description="Federated MAPPO across non-IID sites under secure aggregation vs centralized and alone")
def run_fed_mappo(cfg: FedMAPPOConfig, ctx: RunContext) -> dict[str, Any]:
    torch.set_num_threads(1)
    done: dict[str, Any] = dict(ctx.resume_state or {})
    base = cfg.settings("plain", "", "")
    evaluate = PooledEvaluator(base)
    finals: dict[str, dict[str, np.ndarray]] = {}
    for agg in ("plain", "secure"):
        settings = cfg.settings(agg, str(ctx.path / "checkpoints" / f"fed-{agg}"), str(ctx.path / "sites" / agg))
        if agg not in done:
            def report(rec: dict[str, Any], agg: str = agg) -> None:
                ctx.info(f"federated {agg} round {rec['round']}: pooled return {rec.get('return', float('nan')):.3f}")

            result = simulate(settings, num_cpus=cfg.num_cpus, on_round=report, log_file=ctx.dir.log_path)
            hist = result["history"]
            done[agg] = {"curve": [{k: r[k] for k in ("round", "env_steps", "return", "site_returns")} for r in hist],
                         "timing": [{"round": r["round"], **r["timing"]} for r in hist[1:]],
                         "error_bound": [r.get("error_bound", 0.0) for r in hist[1:]],
                         "weights": result["weights"]}
            for r in hist[1:]:
                ctx.log_timing(aggregation=agg, **{"round": r["round"], **r["timing"]})
            ctx.save_checkpoint(done)
        finals[agg] = done[agg]["weights"]
    if "alone" not in done:
        done["alone"] = [_alone(base, s, evaluate, str(ctx.path / "sites" / "alone")) for s in range(cfg.num_sites)]
        ctx.save_checkpoint(done)
    if "central" not in done:
        done["central"] = _central(base, evaluate)
        ctx.save_checkpoint(done)

    for p, s in zip(done["plain"]["curve"], done["secure"]["curve"], strict=True):
        ctx.log(round=p["round"], env_steps=p["env_steps"], plain_return=p["return"], secure_return=s["return"],
                return_diff=abs(p["return"] - s["return"]), site_returns_plain=p["site_returns"],
                site_returns_secure=s["site_returns"])
    for s, curve in enumerate(done["alone"]):
        for p in curve:
            ctx.log(alone_site=s, env_steps=p["env_steps"], alone_return=p["return"], site_returns=p["site_returns"])
    for p in done["central"]:
        ctx.log(central=True, env_steps=p["env_steps"], central_return=p["return"], site_returns=p["site_returns"])
    weight_diff = max(float(np.max(np.abs(np.asarray(finals["plain"][k], np.float64) - finals["secure"][k])))
                      for k in finals["plain"])
    ctx.log(final_weight_max_abs_diff=weight_diff, error_bound_per_round=max(done["secure"]["error_bound"]))
    evaluate.save_policy(finals["secure"], ctx.path / "policy", done["secure"]["curve"][-1]["env_steps"])
    _plot(ctx, done, cfg.num_sites)

    alone_final = [curve[-1]["return"] for curve in done["alone"]]
    per_round = {agg: (float(np.mean([t["round_seconds"] for t in done[agg]["timing"]])),
                       float(np.mean([t["bytes_out"] + t["bytes_in"] for t in done[agg]["timing"]])))
                 for agg in ("plain", "secure")}
    return {
        "federated_secure_return": done["secure"]["curve"][-1]["return"],
        "federated_plain_return": done["plain"]["curve"][-1]["return"],
        "centralized_return": done["central"][-1]["return"],
        "best_alone_return": max(alone_final),
        "mean_alone_return": float(np.mean(alone_final)),
        "federated_beats_alone": done["secure"]["curve"][-1]["return"] > max(alone_final),
        "federated_margin_over_best_alone": done["secure"]["curve"][-1]["return"] - max(alone_final),
        "initial_return": done["plain"]["curve"][0]["return"],
        "secure_plain_max_return_diff": max(abs(p["return"] - s["return"]) for p, s in
                                            zip(done["plain"]["curve"], done["secure"]["curve"], strict=True)),
        "final_weight_max_abs_diff": weight_diff,
        "plain_seconds_per_round": per_round["plain"][0], "secure_seconds_per_round": per_round["secure"][0],
        "plain_bytes_per_round": per_round["plain"][1], "secure_bytes_per_round": per_round["secure"][1],
        "env_steps": done["central"][-1]["env_steps"],
    }
