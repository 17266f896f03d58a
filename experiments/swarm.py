"""Experiment kinds of the swarm: the Vicsek transition, Couzin's regimes, a flock animation, a learned flock.

* ``vicsek_transition`` -- polarization vs noise for several N at fixed density (several
  seeds, mean and spread after the transient), and polarization vs density.
* ``couzin_regimes`` -- polarization and rotation vs the width of the orientation zone:
  swarm, torus (milling) and parallel motion.
* ``flock_animation`` -- a Mesa :class:`swarm.model.SwarmModel` run drawn as a snapshot with
  headings and an animated GIF.
* ``learned_flock`` -- MAPPO trained on ``swarm/flock-v0`` (30 agents), then its actor drives
  Mesa swarms of 100 to 10,000 agents beside the Reynolds rule and random turns.

The sweep points run on Ray (:mod:`swarm.sweep`); every point owns its seed.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from experiments import ExperimentConfig, RunContext, Section, register_kind
from experiments.marl import EvalSettings, _plot, _run_jobs
from marl.mappo import MAPPOConfig
from swarm.phases import point_seed, steady_order
from swarm.sweep import run_points

Noise = Annotated[float, Field(ge=0, le=2 * math.pi)]
PositiveInt = Annotated[int, Field(gt=0, le=10_000_000)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class SweepSection(Section):
    """Where the points of a sweep run."""

    parallel: bool = Field(True, description="Run the points as Ray tasks (False: in this process).")
    address: str | None = Field(None, description="Ray cluster address for ray.init(address=...); None: a local Ray.")
    num_cpus: int = Field(2, gt=0, le=256, description="CPUs of the local Ray.")


def _transient_below_steps(value: int, info: ValidationInfo) -> int:
    steps = info.data.get("steps")
    if steps is not None and value >= steps:
        raise ValueError(f"transient must be smaller than steps = {steps}")
    return value


def _sweep(cfg: Any, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return run_points(steady_order, points, parallel=cfg.sweep.parallel,
                      address=cfg.sweep.address, num_cpus=cfg.sweep.num_cpus)


# ---------------------------------------------------------------------------------------------
# Vicsek: the order-disorder transition


class VicsekTransitionConfig(ExperimentConfig):
    """Vicsek et al. 1995, figure 2: polarization vs noise at fixed density, and vs density."""

    n_agents: list[Annotated[int, Field(gt=0, le=1_000_000)]] = Field([100, 400, 1600], min_length=1, max_length=20,
                                                                  description="System sizes N (each <= 1e6).")
    density: PositiveFloat = Field(4.0, description="Agents per unit area in the noise sweep.")
    noise: list[Noise] = Field([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0], min_length=1,
                               max_length=1000, description="Noise amplitudes eta, each in [0, 2 pi].")
    speed: NonNegativeFloat = Field(0.03, description="Speed v0.")
    radius: PositiveFloat = Field(1.0, description="Interaction radius r.")
    seeds: int = Field(3, gt=0, le=1000, description="Independent runs per point.")
    steps: PositiveInt = Field(2000, description="Steps per run (<= 1e7).")
    transient: int = Field(1000, ge=0, description="Steps left out of the averages.")
    record_every: PositiveInt = Field(10, description="Record the order every this many steps.")
    densities: list[PositiveFloat] = Field([0.25, 0.5, 1.0, 2.0, 4.0, 8.0], min_length=1, max_length=1000,
                                           description="Densities of the density sweep.")
    density_n_agents: int = Field(400, gt=0, le=1_000_000, description="N of the density sweep.")
    density_noise: Noise = Field(2.0, description="Noise of the density sweep.")
    sweep: SweepSection = Field(default_factory=SweepSection, description="Where the points run.")

    _transient = field_validator("transient")(_transient_below_steps)


@register_kind("vicsek_transition", VicsekTransitionConfig, axis="intelligence",
               description="Vicsek order-disorder transition: polarization vs noise and vs density")
def run_vicsek(cfg: VicsekTransitionConfig, ctx: RunContext) -> dict[str, Any]:
    from swarm.plots import phase_curves

    common = dict(rule="vicsek", steps=cfg.steps, transient=cfg.transient,
                  record_every=cfg.record_every, speed=cfg.speed, radius=cfg.radius)
    noise_points = [dict(common, n_agents=n, density=cfg.density, noise=eta,
                         seed=point_seed(cfg.seed, 0, n, i, s))
                    for n in cfg.n_agents for i, eta in enumerate(cfg.noise) for s in range(cfg.seeds)]
    density_points = [dict(common, n_agents=cfg.density_n_agents, density=rho, noise=cfg.density_noise,
                           seed=point_seed(cfg.seed, 1, i, s))
                      for i, rho in enumerate(cfg.densities) for s in range(cfg.seeds)]
    results = ctx.resume_state
    if results is None:
        ctx.info(f"vicsek_transition: {len(noise_points) + len(density_points)} points "
                 f"({'Ray' if cfg.sweep.parallel else 'in process'})")
        results = _sweep(cfg, noise_points + density_points)
        labels = ["noise"] * len(noise_points) + ["density"] * len(density_points)
        for sweep, p, r in zip(labels, noise_points + density_points, results, strict=True):
            ctx.log(sweep=sweep, n_agents=p["n_agents"], density=p["density"], noise=p["noise"], seed=p["seed"],
                    polarization=r["polarization"], polarization_sd=r["polarization_sd"])
        ctx.save_checkpoint(results)

    by_noise = np.array([r["polarization"] for r in results[: len(noise_points)]])
    by_noise = by_noise.reshape(len(cfg.n_agents), len(cfg.noise), cfg.seeds)
    by_density = np.array([r["polarization"] for r in results[len(noise_points):]])
    by_density = by_density.reshape(len(cfg.densities), cfg.seeds)

    noise = np.array(cfg.noise)
    n_max = max(cfg.n_agents)
    fig = phase_curves(noise, {f"N={n}": by_noise[k] for k, n in enumerate(cfg.n_agents)},
                       xlabel="noise $\\eta$", ylabel="polarization $v_a$",
                       title=f"Vicsek transition ($\\rho$={cfg.density:g}, {cfg.seeds} seeds)",
                       reference=(noise, np.full_like(noise, math.sqrt(math.pi / (4 * n_max))),
                                  f"random headings, N={n_max}"))
    ctx.save_figure(fig, "vicsek_noise")
    fig = phase_curves(np.array(cfg.densities), {f"N={cfg.density_n_agents}, $\\eta$={cfg.density_noise:g}": by_density},
                       xlabel="density $\\rho$", ylabel="polarization $v_a$",
                       title="Vicsek: order grows with density")
    fig.axes[0].set_xscale("log")
    ctx.save_figure(fig, "vicsek_density")
    big = cfg.n_agents.index(n_max)
    return {
        "n_max": n_max,
        "polarization_lowest_noise": float(by_noise[big, int(np.argmin(noise))].mean()),
        "polarization_highest_noise": float(by_noise[big, int(np.argmax(noise))].mean()),
        "random_heading_value": math.sqrt(math.pi / (4 * n_max)),
        "polarization_lowest_density": float(by_density[int(np.argmin(cfg.densities))].mean()),
        "polarization_highest_density": float(by_density[int(np.argmax(cfg.densities))].mean()),
    }


# ---------------------------------------------------------------------------------------------
# Couzin: swarm, torus, parallel


class CouzinRegimesConfig(ExperimentConfig):
    """Couzin et al. 2002, figure 3 in 2D: order vs the width of the zone of orientation."""

    n_agents: int = Field(100, gt=0, le=10_000, description="Group size.")
    orientation_width: list[NonNegativeFloat] = Field(
        [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 13.0, 14.0, 15.0], min_length=1, max_length=1000,
        description="Widths delta r_o of the zone of orientation.")
    attraction_width: NonNegativeFloat = Field(14.0, description="Width delta r_a of the zone of attraction.")
    repulsion: PositiveFloat = Field(1.0, description="Radius r_r of the zone of repulsion.")
    blind_angle_deg: float = Field(90.0, ge=0, lt=360, description="Blind angle behind each individual, degrees.")
    turning_rate_deg: float = Field(40.0, gt=0, description="Maximum turning rate, degrees per unit time.")
    speed: NonNegativeFloat = Field(3.0, description="Speed, distance per unit time.")
    dt: PositiveFloat = Field(0.1, description="Time step tau.")
    noise: NonNegativeFloat = Field(0.05, description="Standard deviation of the angular noise, radians.")
    box: PositiveFloat = Field(200.0, description="Side of the periodic box (large: the group never meets itself).")
    init_radius: PositiveFloat = Field(6.0, description="The group starts in a disc of this radius.")
    seeds: int = Field(3, gt=0, le=1000, description="Independent runs per width.")
    steps: PositiveInt = Field(1500, description="Steps per run.")
    transient: int = Field(1000, ge=0, description="Steps left out of the averages.")
    record_every: PositiveInt = Field(10, description="Record the order every this many steps.")
    sweep: SweepSection = Field(default_factory=SweepSection, description="Where the points run.")

    _transient = field_validator("transient")(_transient_below_steps)


def regime(polarization: float, rotation: float) -> str:
    """Couzin's three collective states from the two order parameters (threshold 0.5)."""
    if rotation >= 0.5 and rotation > polarization:
        return "torus"
    if polarization >= 0.5:
        return "parallel"
    return "swarm"


@register_kind("couzin_regimes", CouzinRegimesConfig, axis="intelligence",
               description="Couzin zones: swarm, torus and parallel motion vs the orientation zone")
def run_couzin(cfg: CouzinRegimesConfig, ctx: RunContext) -> dict[str, Any]:
    from swarm.plots import couzin_figure

    points = [dict(rule="couzin", n_agents=cfg.n_agents, steps=cfg.steps, transient=cfg.transient,
                   record_every=cfg.record_every, box=cfg.box, init_radius=cfg.init_radius,
                   keep_state=(s == 0), seed=point_seed(cfg.seed, 2, i, s),
                   repulsion=cfg.repulsion, orientation_width=w, attraction_width=cfg.attraction_width,
                   blind_angle=math.radians(cfg.blind_angle_deg),
                   turning_rate=math.radians(cfg.turning_rate_deg), speed=cfg.speed, dt=cfg.dt,
                   noise=cfg.noise)
              for i, w in enumerate(cfg.orientation_width) for s in range(cfg.seeds)]
    results = ctx.resume_state
    if results is None:
        ctx.info(f"couzin_regimes: {len(points)} points ({'Ray' if cfg.sweep.parallel else 'in process'})")
        results = _sweep(cfg, points)
        for p, r in zip(points, results, strict=True):
            ctx.log(orientation_width=p["orientation_width"], seed=p["seed"],
                    polarization=r["polarization"], rotation=r["rotation"],
                    regime=regime(r["polarization"], r["rotation"]))
        ctx.save_checkpoint(results)

    shape = (len(cfg.orientation_width), cfg.seeds)
    polar = np.array([r["polarization"] for r in results]).reshape(shape)
    rot = np.array([r["rotation"] for r in results]).reshape(shape)
    mean_regime = [regime(p, m) for p, m in zip(polar.mean(1), rot.mean(1), strict=True)]
    snapshots = []
    for name in ("swarm", "torus", "parallel"):
        if name in mean_regime:
            # The most typical width of each regime: the one where its order parameter is extreme.
            score = {"swarm": -(polar.mean(1) + rot.mean(1)), "torus": rot.mean(1), "parallel": polar.mean(1)}[name]
            idx = max((k for k, r in enumerate(mean_regime) if r == name), key=lambda k: score[k])
            snapshots.append((name, cfg.orientation_width[idx], results[idx * cfg.seeds]))
    ctx.save_figure(couzin_figure(np.array(cfg.orientation_width), polar, rot, snapshots), "couzin_regimes")
    return {
        "regimes_seen": sorted(set(mean_regime)),
        "max_rotation": float(rot.mean(1).max()),
        "max_polarization": float(polar.mean(1).max()),
        "min_order": float((polar.mean(1) + rot.mean(1)).min()),
    }


# ---------------------------------------------------------------------------------------------
# A flock drawn: snapshot with headings and a GIF


class FlockAnimationConfig(ExperimentConfig):
    """A Mesa SwarmModel run, drawn: the last frame with headings and an animated GIF."""

    rule: Literal["reynolds", "vicsek", "couzin"] = Field("reynolds", description="The local rule.")
    n_agents: int = Field(200, gt=0, le=10_000, description="Number of agents (a Mesa agent each).")
    box: PositiveFloat = Field(100.0, description="Side of the periodic box (Mesa's example: 100).")
    steps: int = Field(300, gt=0, le=1_000_000, description="Steps to simulate.")
    frames: int = Field(60, gt=0, le=1000, description="Frames in the GIF (evenly spaced steps).")
    fps: int = Field(12, gt=0, le=100, description="Frames per second of the GIF.")
    params: dict[str, float] = Field(default_factory=dict, description="The rule's parameters (e.g. noise: 0.3).")

    @field_validator("params")
    @classmethod
    def _params_fit_the_rule(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        from swarm.rule import make_rule

        make_rule(info.data.get("rule", "reynolds"), **value)  # raises ValueError naming the parameter
        return value


@register_kind("flock_animation", FlockAnimationConfig, axis="intelligence",
               description="A flock emerging in a Mesa model: snapshot with headings and a GIF")
def run_flock(cfg: FlockAnimationConfig, ctx: RunContext) -> dict[str, Any]:
    from swarm.metrics import clusters, nearest_neighbour
    from swarm.model import SwarmModel
    from swarm.plots import flock_gif, flock_snapshot

    model = SwarmModel(cfg.rule, cfg.n_agents, box=cfg.box, seed=cfg.seed, **cfg.params)
    every = max(1, cfg.steps // cfg.frames)
    frames = []
    radius = model.perception.radius

    def heading() -> np.ndarray:
        return np.arctan2(model.directions[:, 1], model.directions[:, 0])

    for t in ctx.progress(range(cfg.steps + 1), description="flock"):
        if t > 0:
            model.step()
        if t % every == 0 or t == cfg.steps:
            frames.append((model.positions.copy(), heading()))
            ctx.log(step=t, polarization=model.polarization, rotation=model.rotation,
                    nearest_neighbour=nearest_neighbour(model.positions, model.box),
                    clusters=clusters(model.positions, radius, model.box))
    polar = model.datacollector.get_model_vars_dataframe()["polarization"].to_numpy()
    ctx.save_figure(flock_snapshot(model.positions, heading(), model.box, polar,
                                   f"{cfg.rule}, N={cfg.n_agents}, step {cfg.steps}"), "flock")
    with ctx.artifact("figures/flock.gif") as tmp:
        flock_gif(frames, model.box, tmp, fps=cfg.fps, title=f"{cfg.rule}, N={cfg.n_agents}")
    return {"rule": cfg.rule, "initial_polarization": float(polar[0]), "final_polarization": float(polar[-1]),
            "final_clusters": clusters(model.positions, radius, model.box)}


# ---------------------------------------------------------------------------------------------
# A flock learned by MAPPO on swarm/flock-v0, driving Mesa swarms of any size


# Mesa's boid world (density 0.01, speed 1), 30 agents, alignment reward: see FlockTrainConfig.
FLOCK_ENV = {"n_agents": 30, "k": 4, "box": 54.8, "speed": 1.0, "cohesion": 0.0, "max_cycles": 100}


class FlockTrainConfig(MAPPOConfig):
    """MAPPO on ``swarm/flock-v0`` with an actor that reads no agent id (so it runs at any N).

    The environment is Mesa's boid world: 30 agents at Mesa's density (0.01 per unit area, box
    54.8) moving 1 per step, so the Reynolds rule compared with it runs with Mesa's defaults. The
    reward is alignment alone (``cohesion: 0``) and the training swarm holds 30 agents: an actor
    trained with ``cohesion: 0.5`` on 10 agents packed them into tight groups whose k nearest
    neighbours all lie inside the group, and it reached polarization 0.09 at N=1,000 (one seed,
    200k steps) while ordering N=100 to 0.93; with 30 agents the actor meets several groups.
    """

    env: str = Field("swarm/flock-v0", description="The environment (swarm/flock-v0 only).")
    env_kwargs: dict[str, Any] = Field(
        default_factory=lambda: dict(FLOCK_ENV),
        description="Keyword arguments of swarm/flock-v0 (n_agents, k, box, speed, max_turn, n_turns, cohesion, "
                    "max_cycles); the ones given replace these defaults one by one.")
    backend: Literal["vec", "parallel"] = Field("parallel", description="parallel: copies of the ParallelEnv (flock-v0 has no batched version).")
    agent_id: bool = Field(False, description="Must stay false: an actor reading a one-hot id runs only at its training N.")
    num_envs: int = Field(16, ge=1, le=65_536, description="Environments stepped together (B).")
    rollout_steps: int = Field(50, ge=1, le=100_000, description="Steps per environment between updates (T).")
    total_steps: int = Field(60_000, ge=1, le=10**10, description="Environment steps to train for (each moves every agent once).")

    @model_validator(mode="before")
    @classmethod
    def _env_kwargs_over_the_defaults(cls, data: Any) -> Any:
        # train.env_kwargs.k=6 changes k alone; the other keyword arguments keep their defaults.
        if isinstance(data, dict) and isinstance(data.get("env_kwargs"), dict):
            data = {**data, "env_kwargs": {**FLOCK_ENV, **data["env_kwargs"]}}
        return data


class LearnedFlockConfig(EvalSettings):
    """Train MAPPO on swarm/flock-v0, then drive Mesa swarms of several sizes with it, Reynolds and random turns."""

    train: FlockTrainConfig = Field(default_factory=FlockTrainConfig, description="MAPPO on swarm/flock-v0.")
    eval_every: int = Field(10, ge=1, le=10**9, description="Updates between greedy evaluations on flock-v0.")
    eval_episodes: int = Field(16, ge=1, le=100_000, description="Greedy episodes per evaluation.")
    baselines: list[str] = Field(["random", "noop"], description="Baselines on flock-v0: random, noop.")
    n_agents: list[Annotated[int, Field(ge=2, le=100_000)]] = Field(
        [100, 1000, 10000], min_length=1, max_length=10, description="Sizes of the Mesa swarms (each 2 .. 100,000).")
    steps: int = Field(600, gt=0, le=100_000, description="Steps of each Mesa swarm.")
    seeds: int = Field(3, ge=1, le=100, description="Swarms per size and policy (each from its own start); headlines average them.")
    record_every: PositiveInt = Field(10, description="Record polarization and clusters every this many steps.")
    window: float = Field(0.25, gt=0, le=1, description="Headline polarization: mean over this last fraction of each run's records.")
    cluster_radius: PositiveFloat = Field(10.0, description="Agents closer than this are linked in the cluster count (Mesa's vision).")
    reynolds: dict[str, float] = Field(default_factory=dict, description="Parameters of the Reynolds rule (default: Mesa's boid_flockers).")
    gif_n_agents: int = Field(1000, ge=2, le=100_000, description="The size drawn in the GIF (one of n_agents).")
    frames: int = Field(40, gt=0, le=1000, description="Frames in the GIF.")
    fps: int = Field(10, gt=0, le=100, description="Frames per second of the GIF.")

    @field_validator("reynolds")
    @classmethod
    def _reynolds_parameters(cls, value: dict[str, float]) -> dict[str, float]:
        from swarm.rule import make_rule

        make_rule("reynolds", **value)  # raises ValueError naming the parameter
        return value

    @field_validator("train")
    @classmethod
    def _a_flock_actor_for_any_n(cls, value: FlockTrainConfig) -> FlockTrainConfig:
        if value.env != "swarm/flock-v0":
            raise ValueError(f"train.env must be swarm/flock-v0 (the swarm's k-nearest view), got {value.env!r}")
        if value.agent_id or not value.share_params:
            raise ValueError("train.agent_id must be false and train.share_params true: one actor for any number of agents")
        return value

    @field_validator("gif_n_agents")
    @classmethod
    def _gif_size_is_run(cls, value: int, info: ValidationInfo) -> int:
        sizes = info.data.get("n_agents")
        if sizes is not None and value not in sizes:
            raise ValueError(f"gif_n_agents must be one of n_agents {sizes}, got {value}")
        return value


def _drive(policy: Any, n: int, cfg: LearnedFlockConfig, seed: int, ctx: RunContext, name: str,
           frames: list[tuple[np.ndarray, np.ndarray]] | None, run: int, **parts: Any) -> dict[str, Any]:
    """One Mesa swarm of ``n`` agents driven by ``policy``; logs its order, returns its series and final state."""
    from swarm.metrics import clusters
    from swarm.model import SwarmModel

    model = SwarmModel(policy, n, seed=seed, **parts)
    every = max(1, cfg.steps // cfg.frames)
    series: dict[str, list[float]] = {"step": [], "polarization": [], "clusters": []}

    def heading() -> np.ndarray:
        return np.arctan2(model.directions[:, 1], model.directions[:, 0])

    for t in range(cfg.steps + 1):
        if t > 0:
            model.step()
        if t % cfg.record_every == 0 or t == cfg.steps:
            point = {"step": t, "polarization": model.polarization,
                     "clusters": clusters(model.positions, cfg.cluster_radius, model.box)}
            for key, value in point.items():
                series[key].append(value)
            ctx.log(n_agents=n, seed=run, policy=name, **point)
        if frames is not None and (t % every == 0 or t == cfg.steps):
            frames.append((model.positions.copy(), heading()))
    return {"series": {k: np.asarray(v) for k, v in series.items()},
            "state": (model.positions.copy(), heading(), model.box)}


@register_kind("learned_flock", LearnedFlockConfig, axis="intelligence",
               description="MAPPO on swarm/flock-v0 drives Mesa swarms of 100 to 10,000 agents beside Reynolds and random")
def run_learned_flock(cfg: LearnedFlockConfig, ctx: RunContext) -> dict[str, Any]:
    from swarm.learned import RandomTurns, load_learned
    from swarm.plots import order_over_time, panels_gif, snapshot_grid
    from swarm.reynolds import Reynolds

    # Phase 1: train (checkpointed and resumable like every MAPPO run); the actor lands in policy/.
    done = _run_jobs(cfg, ctx, [("MAPPO", cfg.seed, cfg.train)])
    headline = _plot(ctx, {"MAPPO": [done["curves"][f"MAPPO/seed{cfg.seed}"]]}, done["baselines"],
                     "MAPPO on swarm/flock-v0 (actor without agent id)", done["teams"])

    # Phase 2: the saved actor, read back as data, drives Mesa swarms at the training density.
    learned = load_learned(ctx.path)
    density = learned.default_density
    series: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    states: dict[int, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}  # seed 0's last state
    gif_frames: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, n in enumerate(cfg.n_agents):
        runs: dict[str, list[dict[str, np.ndarray]]] = {}
        for s in ctx.progress(range(cfg.seeds), description=f"N={n}"):
            drivers = {
                "learned": (learned, {}),
                "reynolds": (Reynolds(**cfg.reynolds), {}),
                "random": (RandomTurns(len(learned.motion.turns), point_seed(cfg.seed, 4, i, s)),
                           {"perception": learned.perception, "motion": learned.motion}),
            }
            for name, (policy, parts) in drivers.items():
                frames = gif_frames.setdefault(name, []) if n == cfg.gif_n_agents and s == 0 else None
                # The same seed for the three: every policy starts from the same swarm.
                out = _drive(policy, n, cfg, point_seed(cfg.seed, 3, i, s), ctx, name, frames, s,
                             density=density, **parts)
                runs.setdefault(name, []).append(out["series"])
                if s == 0:
                    states.setdefault(n, {})[name] = out["state"]
        series[n] = {}
        for name, per_seed in runs.items():
            # Over seeds: the mean curves (figure), and each run's mean over the last window (headline).
            series[n][name] = {k: np.mean([r[k] for r in per_seed], axis=0) for k in per_seed[0]}
            keep = max(1, int(round(cfg.window * len(per_seed[0]["polarization"]))))
            late = np.array([r["polarization"][-keep:].mean() for r in per_seed])
            headline[f"polarization_{name}_N{n}"] = float(late.mean())
            headline[f"polarization_{name}_N{n}_sd"] = float(late.std())
            headline[f"clusters_{name}_N{n}"] = float(np.mean([r["clusters"][-1] for r in per_seed]))
    ctx.save_figure(order_over_time(series), "learned_flock_order")
    ctx.save_figure(snapshot_grid(states, f"step {cfg.steps}, density {density:.3g}"), "learned_flock_snapshots")
    names = list(gif_frames)
    box = states[cfg.gif_n_agents][names[0]][2]
    with ctx.artifact("figures/learned_flock.gif") as tmp:
        panels_gif(list(zip(*gif_frames.values(), strict=True)), box, tmp,
                   titles=[f"{name}, N={cfg.gif_n_agents:,}" for name in names], fps=cfg.fps)
    for n in cfg.n_agents:
        gap = headline[f"polarization_learned_N{n}"] - headline[f"polarization_reynolds_N{n}"]
        headline[f"learned_minus_reynolds_N{n}"] = gap
        # The target: the learned flock orders at least as well as Reynolds, up to 0.05.
        headline[f"learned_reaches_reynolds_N{n}"] = bool(gap >= -0.05)
    return headline
