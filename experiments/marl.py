"""Experiment kinds of CTDE: train MAPPO (or IPPO), and compare the two over seeds.

* ``mappo``: one training run of :class:`marl.mappo.MAPPO`; ``train.central_critic: false``
  makes it IPPO. Logs every update, evaluates the greedy policy every ``eval_every`` updates,
  and draws the learning curve with the baselines.
* ``ctde_compare``: MAPPO and IPPO, each over ``seeds``, with the random, no-op and scripted
  baselines measured on the same evaluator; the figure shows mean and spread over seeds.

``train.workers: N`` trains on N data-parallel learner processes (:mod:`marl.distributed`): each
steps its shard of the environments and the gradients are summed over the ring all-reduce, so
the updates are one process's; rank 0 evaluates and saves the policy. Such a job is
checkpointed when it finishes (a resumed run starts an unfinished one over).

Both checkpoint every ``checkpoint_every`` updates (the trainer's whole state, the curves so
far), so ``python -m experiments resume DIR`` writes exactly the lines an uninterrupted run
would. Each checkpoint also writes the policy so far to ``checkpoints/policy/``, and a finished
training job writes ``policy/`` (``policy/NAME-seedS/`` when a run trains several): the
actor's tensors and the JSON that rebuilds it, read back by :func:`marl.load_policy`.

With competing teams (simple_tag, simple_adversary, ...) every return is reported per team
(``return_TEAM``); no headline number averages opponents.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from experiments import ExperimentConfig, RunContext, Section, UserError, register_kind
from marl.evaluate import baselines, evaluate
from marl.mappo import MAPPO, MAPPOConfig, env_teams, make_batched_env
from marl.policy import groups_of

BASELINE_STYLE = {"random": ":", "noop": "-.", "scripted": "--"}


class LogSettings(Section):
    """Optional extra outputs beside ``metrics.jsonl`` (which is always written)."""

    tensorboard: bool = Field(False, description="Also write TensorBoard event files under tensorboard/ (needs the 'tb' extra).")


class EvalSettings(ExperimentConfig):
    """Fields shared by both kinds (evaluation and checkpoints)."""

    log: LogSettings = Field(default_factory=LogSettings, description="Extra logs: log.tensorboard writes event files.")

    train: MAPPOConfig = Field(default_factory=MAPPOConfig, description="MAPPO / IPPO hyperparameters.")
    eval_every: int = Field(20, ge=1, le=10**9, description="Updates between greedy evaluations.")
    eval_episodes: int = Field(100, ge=1, le=100_000, description="Greedy episodes per evaluation (one per environment).")
    eval_seed: int = Field(10_000, description="Reset seed of the evaluator: the same starting worlds for every policy.")
    checkpoint_every: int = Field(10, ge=1, description="Updates between checkpoints.")
    baselines: list[str] = Field(["random", "noop", "scripted"], description="Baselines: random, noop, scripted (simple_spread only).")

    @model_validator(mode="after")
    def _check_before_the_run(self) -> EvalSettings:
        # Every check that needs the whole config runs here, before a run directory exists.
        try:
            _check(self)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self


def _check(cfg: EvalSettings) -> None:
    import re

    from experiments.rollout import check_env_kwargs

    try:
        check_env_kwargs(cfg.train.env, cfg.train.env_kwargs, key="train.env")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.train.device):
        raise UserError(f"config key 'train.device' = {cfg.train.device!r} is not a torch device here (allowed: cpu, cuda, cuda:K)")
    if cfg.train.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"config key 'train.device' = {cfg.train.device!r} but CUDA is not available here (allowed: cpu)")
        index = int(cfg.train.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"config key 'train.device' = {cfg.train.device!r} but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    if cfg.train.backend == "vec":
        from envs.registry import make_vec, registered_vec

        if cfg.train.env not in registered_vec():
            raise UserError(f"config key 'train.backend' = 'vec' but {cfg.train.env} has no batched implementation "
                            f"(batched: {', '.join(registered_vec())}); use backend 'parallel'")
        try:
            make_vec(cfg.train.env, num_envs=1, device="cpu", **cfg.train.env_kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"config key 'train.env_kwargs': the batched {cfg.train.env} refuses them: {exc}") from None
        if cfg.train.workers > 1:
            try:
                make_vec(cfg.train.env, num_envs=1, device="cpu", shard=(0, 2), **cfg.train.env_kwargs)
            except TypeError:
                raise UserError(f"config key 'train.workers' = {cfg.train.workers}: the batched {cfg.train.env} cannot be "
                                "split over learners; use train.backend=parallel or train.workers=1") from None
    if cfg.log.tensorboard:
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs the real package)
        except ImportError:
            raise UserError("config key 'log.tensorboard' = true needs the tensorboard package: "
                            "pip install 'agora[tb]' (or set it to false)") from None
    allowed = {"random", "noop", "scripted"}
    bad = [b for b in cfg.baselines if b not in allowed]
    if bad:
        raise UserError(f"config key 'baselines' has {bad} (allowed: {', '.join(sorted(allowed))})")
    if "scripted" in cfg.baselines and cfg.train.env != "mpe/simple_spread-v3":
        raise UserError("config key 'baselines': 'scripted' exists for mpe/simple_spread-v3 only")


def team_indices(cfg: MAPPOConfig, env: Any) -> dict[str, list[int]]:
    """Team name -> agent indices of ``env`` (one team ``all`` when nobody competes)."""
    out: dict[str, list[int]] = {}
    for g in groups_of(env, env_teams(cfg)):
        out.setdefault(g.team, []).extend(g.agents)
    return {k: sorted(v) for k, v in out.items()}


def _policy_dir(key: str, single: bool) -> str:
    return "policy" if single else f"policy/{key.replace('/', '-')}"


class _Board:
    """TensorBoard mirror of what a job logs to metrics.jsonl: one event directory per job.

    Only numbers go in (ints, floats, bools); the step is the update index, so a resumed run
    purges whatever the interrupted run wrote past its checkpoint instead of drawing it twice.
    """

    def __init__(self, directory: Any, resume_from: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events at steps >= it: those after the checkpoint being resumed.
        purge = None if resume_from is None else resume_from + 1
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge)

    def scalars(self, prefix: str, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (bool, int, float)) and key != "update":
                self.writer.add_scalar(f"{prefix}/{key}", float(value), global_step=step)

    def close(self) -> None:
        self.writer.close()


def _run_jobs(cfg: EvalSettings, ctx: RunContext, jobs: list[tuple[str, int, MAPPOConfig]]) -> dict[str, Any]:
    """Trains each (name, seed, config) job in order, saving each job's policy.

    Returns:
        ``curves`` (each job's evaluations, keyed ``NAME/seedS``), ``baselines`` and ``teams``.
    """
    import torch

    torch.set_num_threads(cfg.train.threads)
    state = ctx.resume_state or {"curves": {}, "baselines": None, "current": None}
    curves: dict[str, list[dict[str, Any]]] = state["curves"]
    eval_env = make_batched_env(cfg.train, cfg.eval_episodes, cfg.eval_seed)
    teams = team_indices(cfg.train, eval_env)
    state["teams"] = teams
    if state["baselines"] is None:
        state["baselines"] = baselines(eval_env, cfg.eval_seed, tuple(cfg.baselines), teams)
        for name, result in state["baselines"].items():
            ctx.log(baseline=name, **result)
        ctx.save_checkpoint(state)
    single = len(jobs) == 1
    for name, seed, train_cfg in jobs:
        key = f"{name}/seed{seed}"
        if key in curves and (state["current"] is None or state["current"]["key"] != key):
            continue
        if train_cfg.workers > 1:
            curves[key] = _run_learners(cfg, ctx, key, seed, train_cfg, _policy_dir(key, single))
            state["current"] = None
            ctx.save_checkpoint(state)
            continue
        trainer = MAPPO(train_cfg, seed)
        if state["current"] is not None and state["current"]["key"] == key:
            trainer.load_state_dict(state["current"]["trainer"])
        else:
            curves[key] = []
        ctx.info(f"{key}: {trainer.num_updates} updates of {trainer.batch_steps} env steps; "
                 f"groups {[(g.name, len(g.agents)) for g in trainer.groups]}")
        remaining = range(trainer.update_index, trainer.num_updates)
        board = None
        if cfg.log.tensorboard:
            # A resumed run purges the events past its checkpoint: from update_index + 1, so all
            # of them when the job restarts from its beginning (killed before its first checkpoint).
            resumed = trainer.update_index if ctx.resume_state is not None else None
            board = _Board(ctx.path / "tensorboard" / key.replace("/", "-"), resumed)
        for _ in ctx.progress(remaining, description=key):
            metrics = trainer.train_iteration()
            u = metrics["update"]
            ctx.log(run=key, **metrics)
            if board is not None:
                board.scalars("train", u, metrics)
            if u % cfg.eval_every == 0 or u == trainer.num_updates:
                result = evaluate(trainer.greedy_policy, eval_env, cfg.eval_seed, teams)
                point = {"update": u, "env_steps": metrics["env_steps"], **result}
                curves[key].append(point)
                ctx.log(run=key, eval=True, **point)
                if board is not None:
                    board.scalars("eval", u, point)
            if u % cfg.checkpoint_every == 0 and u < trainer.num_updates:
                # The policy first: a checkpoint never points at a policy older than itself.
                trainer.save_policy(ctx.path / "checkpoints" / _policy_dir(key, single))
                if board is not None:
                    board.writer.flush()  # events up to the checkpoint survive a crash
                state["current"] = {"key": key, "trainer": trainer.state_dict()}
                ctx.save_checkpoint(state)
        if board is not None:
            board.close()
        trainer.save_policy(ctx.path / _policy_dir(key, single))
        state["current"] = None
        ctx.save_checkpoint(state)
    return state


def _run_learners(cfg: EvalSettings, ctx: RunContext, key: str, seed: int, train_cfg: MAPPOConfig,
                  policy_dir: str) -> list[dict[str, Any]]:
    """One job on ``train.workers`` data-parallel learner processes; logs what rank 0 returns."""
    from marl.distributed import LearnerJob, run_local

    ctx.info(f"{key}: {train_cfg.workers} data-parallel learners on shards of {train_cfg.num_envs} environments")
    job = LearnerJob(config=train_cfg.model_dump(), seed=seed, eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes,
                     eval_seed=cfg.eval_seed, policy_dir=str(ctx.path / policy_dir))
    out = run_local(job)[0]
    evals = {e["update"]: e for e in out["evals"]}
    for m in out["metrics"]:
        ctx.log(run=key, **m)
        if m["update"] in evals:
            ctx.log(run=key, eval=True, **evals[m["update"]])
    return out["evals"]


def _plot(ctx: RunContext, groups: dict[str, list[list[dict[str, Any]]]], base: dict[str, dict[str, Any]],
          title: str, teams: dict[str, list[int]]) -> dict[str, float]:
    """The learning curves (mean and min-max over seeds) with baselines; returns the headline.

    With several teams each team gets its own curve and headline keys (``..._return_TEAM``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffixes = [""] if len(teams) <= 1 else [f"_{t}" for t in teams]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    headline: dict[str, float] = {}
    for label, runs in groups.items():
        steps = np.array([p["env_steps"] for p in runs[0]])
        for sfx in suffixes:
            returns = np.array([[p[f"return{sfx}"] for p in run] for run in runs])
            mean = returns.mean(axis=0)
            name = f"{label}{' ' + sfx[1:] if sfx else ''}"
            line = ax.plot(steps, mean, label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")[0]
            if len(runs) > 1:
                ax.fill_between(steps, returns.min(axis=0), returns.max(axis=0), color=line.get_color(), alpha=0.2)
            headline[f"{label}_final_return{sfx}"] = float(mean[-1])
        for key, name in (("covered_landmarks", "covered"), ("collisions", "collisions")):
            if key in runs[0][-1]:  # simple_spread's evaluator extras
                headline[f"{label}_final_{name}"] = float(np.mean([run[-1][key] for run in runs]))
        headline["env_steps"] = int(steps[-1])
    for name, result in base.items():
        for sfx in suffixes:
            ax.axhline(result[f"return{sfx}"], color="gray", ls=BASELINE_STYLE[name], lw=1.2,
                       label=f"{name}{' ' + sfx[1:] if sfx else ''} ({result[f'return{sfx}']:.1f})")
            headline[f"{name}_return{sfx}"] = float(result[f"return{sfx}"])
    ax.set(xlabel="environment steps", ylabel="greedy per-agent return", title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ctx.save_figure(fig, "learning_curve")
    return headline


class MAPPORunConfig(EvalSettings):
    """One MAPPO (or IPPO, ``train.central_critic: false``) training run with evaluations."""


@register_kind("mappo", MAPPORunConfig, axis="intelligence",
               description="MAPPO (central critic on env.state()) or IPPO on a PettingZoo environment")
def run_mappo(cfg: MAPPORunConfig, ctx: RunContext) -> dict[str, Any]:
    _check(cfg)
    name = "MAPPO" if cfg.train.central_critic else "IPPO"
    done = _run_jobs(cfg, ctx, [(name, cfg.seed, cfg.train)])
    return _plot(ctx, {name: [done["curves"][f"{name}/seed{cfg.seed}"]]}, done["baselines"], f"{name} on {cfg.train.env}",
                 done["teams"])


class CompareConfig(EvalSettings):
    """MAPPO and IPPO trained with the same hyperparameters over several seeds."""

    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field([0, 1, 2], min_length=1, max_length=100, description="Training seeds of each algorithm.")


@register_kind("ctde_compare", CompareConfig, axis="intelligence",
               description="MAPPO vs IPPO over seeds with random, no-op and scripted baselines")
def run_compare(cfg: CompareConfig, ctx: RunContext) -> dict[str, Any]:
    _check(cfg)
    mappo = cfg.train.model_copy(update={"central_critic": True})
    ippo = cfg.train.model_copy(update={"central_critic": False})
    jobs = [("MAPPO", s, mappo) for s in cfg.seeds] + [("IPPO", s, ippo) for s in cfg.seeds]
    done = _run_jobs(cfg, ctx, jobs)
    groups = {name: [done["curves"][f"{name}/seed{s}"] for s in cfg.seeds] for name in ("MAPPO", "IPPO")}
    return _plot(ctx, groups, done["baselines"], f"CTDE on {cfg.train.env}: central vs local critic", done["teams"])
