"""MAPPO on environments it was not tuned for: greedy return against random at a fixed budget.

For each environment, MAPPO (central critic, parameters shared per group, the project's
default hyperparameters unless stated) trains for a fixed number of environment steps (stated
in each line as ``budget_steps``), then its greedy policy and the random policy play the same
``episodes`` evaluation episodes (seed 10000). One JSON line per environment (per team for
competitive ones: the headline never averages opponents) with ``ours`` (MAPPO's mean
per-agent return), ``reference`` (random's), ``margin`` = ours - reference, the training's
environment steps per second and its wall time. ``ratio`` is ours / reference when both are
positive, reference / ours when both are negative (above 1: MAPPO better), else null.

Then, for the non-batched pursuit and knights_archers_zombies, the same training with the
copies stepped in ``env_workers`` processes against all in one process: training env-steps/s
end to end, ours (env_workers) / reference (one process), with the cores this machine has, the
CPU seconds of the main process and of the workers, and the load average (other processes on
a shared machine take cores from both sides). ``--only pursuit_throughput
knights_archers_zombies_throughput`` runs just this comparison.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

import torch

from benchmarks.common import parse_args
from experiments.marl import team_indices
from marl.evaluate import evaluate, random_policy
from marl.mappo import MAPPO, MAPPOConfig, make_batched_env

EVAL_SEED = 10_000

# name, env id, env kwargs, backend, budget (env steps), quick budget, eval episodes, config overrides
CASES: list[tuple[str, str, dict[str, Any], str, int, int, int, dict[str, Any]]] = [
    ("simple_spread", "mpe/simple_spread-v3", {}, "vec", 200_000, 20_000, 100, {}),
    ("simple_reference", "mpe/simple_reference-v3", {}, "parallel", 150_000, 4_000, 32, {"num_envs": 16}),
    ("simple_speaker_listener", "mpe/simple_speaker_listener-v4", {}, "parallel", 40_000, 4_000, 32, {"num_envs": 16}),
    ("simple_tag", "mpe/simple_tag-v3", {}, "parallel", 40_000, 4_000, 32, {"num_envs": 16}),
    ("pursuit", "sisl/pursuit-v5", {"max_cycles": 100}, "parallel", 24_000, 2_000, 32,
     {"num_envs": 16, "rollout_steps": 50, "env_workers": 2}),
    ("knights_archers_zombies", "butterfly/knights_archers_zombies-v11", {"max_cycles": 200}, "parallel", 100_000, 4_000, 32,
     {"num_envs": 16, "rollout_steps": 50, "env_workers": 2, "lr": 1e-3}),
    ("multiwalker", "sisl/multiwalker-v9", {"max_cycles": 200}, "parallel", 150_000, 4_000, 16,
     {"num_envs": 16, "rollout_steps": 50, "env_workers": 2, "lr": 1e-3, "gamma": 0.99}),
    ("cooperative_pong", "butterfly/cooperative_pong-v6", {"max_cycles": 200, "render_ratio": 4, "image_pool": 3, "grayscale": True},
     "parallel", 300_000, 1_000, 100,
     {"num_envs": 16, "rollout_steps": 32, "env_workers": 2, "num_minibatches": 4, "lr": 1e-3, "update_threads": 2}),
]

# Why a case departs from the environment's defaults or the trainer's (printed with its line).
NOTES: dict[str, str] = {
    "pursuit": "max_cycles=100 (default 500): a fifth of the cost per episode; every policy pays the urgency "
               "reward -0.1 per step (-10 per agent over 100), so catches (+5, four pursuers surround an evader, "
               "surround=True as by default) are what lifts the return above -10",
    "knights_archers_zombies": "max_cycles=200 (default 900): shorter episodes, more of them per budget",
    "multiwalker": "max_cycles=200 (default 500): shorter episodes; falling still ends the episode with -100 "
                   "(terminate_on_fall, shared_reward as by default)",
    "cooperative_pong": "render_ratio=4 (default 2): 140x240 screens; image_pool=3, grayscale=true (envs.make's "
                        "preprocessing, in the env workers): the policy and critic read 46x80x1 instead of 140x240x3 "
                        "values (the ball, 5 px, and the paddles, 5 and 7 px wide, stay visible in the 3x3 block "
                        "averages), 3.4x less CPU per env step. The ball (9 px a step) can pass through the 5-px left "
                        "paddle, so no policy keeps every rally (scripted_tracker: paddles that follow the ball's row "
                        "in the same reduced pixels, the same episodes; on the full screens 56 +- 40, on the game's own "
                        "positions 62 +- 42 at render_ratio 4, 100 in every episode at 2); max_cycles=200 (default "
                        "900): 0.5 per step in play (100 / max_cycles), -10 and the end when the ball leaves. The "
                        "registry builds it with render_mode='rgb_array': without a render mode PettingZoo never draws "
                        "the screen and every observation is black. 16 copies, 4 minibatches, lr=1e-3 (annealed), "
                        "update_threads=2, 100 evaluation episodes; 300k steps take about 28 minutes on 2 cores. "
                        "Smaller budgets are not enough: with a 60k-step budget (the same settings) 8.59 +- 9.99 "
                        "against random's 6.67 +- 17.13 (1.0 SE), and along one run with a 150k-step schedule (one "
                        "update thread, 32 episodes every 10k steps) 3.8, 18.9, 12.7, 15.7, 14.8, 6.4 at 10k..60k",
}


def pong_tracker(env: Any, env_kwargs: dict[str, Any]) -> Any:
    """cooperative_pong's upper reference: each paddle moves toward the ball's row, read from the pixels.

    Not learned: it shows what a policy could reach on these episodes, from the observations
    MAPPO reads. On the screen (``render_ratio`` r) the left paddle is ``20 // r`` pixels wide
    and the right one, a stepped "cake" of four parts, ``4 * (30 // r)``; the observation is
    that screen in blocks of ``image_pool`` p. The ball is the lit pixels between the paddles'
    columns; a paddle's centre is the mean lit row of its outermost columns. While the ball is
    inside a paddle's columns (or the screen is blank) the paddles stay. A dead zone of 16
    screen pixels (4 at r = 4; at least one observed pixel) keeps a paddle (12 px a step) from
    oscillating around the ball.
    """
    h, w, c = env.observation_space("paddle_0").shape
    r, p = env_kwargs.get("render_ratio", 2), env_kwargs.get("image_pool", 1)
    left, right = -(-(20 // r) // p), -(-(4 * (30 // r)) // p)
    edge = max(1, 3 // p)  # observed columns surely inside a paddle's outermost part
    dead = max(1, 16 // (r * p))

    def act(obs: torch.Tensor) -> torch.Tensor:
        lit = obs.reshape(*obs.shape[:2], h, w, c).amax(-1) > 0  # [B, N, H, W]
        rows = torch.arange(h, dtype=torch.float32)

        def mean_row(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            on = mask.any(-1).float()  # [B, N, H]
            count = on.sum(-1)
            return (on * rows).sum(-1) / count.clamp(min=1), count > 0

        ball_y, seen = mean_row(lit[..., left:w - right])
        pad_left, _ = mean_row(lit[..., :edge])
        pad_right, _ = mean_row(lit[..., w - edge:])
        paddle_y = torch.stack((pad_left[:, 0], pad_right[:, 1]), dim=1)
        up = seen & (ball_y < paddle_y - dead)
        down = seen & (ball_y > paddle_y + dead)
        return up.long() * 1 + down.long() * 2  # 0 stay, 1 up, 2 down

    return act


# Extra reference policies of a case, evaluated on the same episodes: name -> (line key, factory).
UPPER_REFERENCES = {"cooperative_pong": ("scripted_tracker", pong_tracker)}


def line(**values: Any) -> None:
    print(json.dumps(values), flush=True)


def ratio(ours: float, ref: float) -> float | None:
    if ours > 0 and ref > 0:
        return round(ours / ref, 4)
    if ours < 0 and ref < 0:
        return round(ref / ours, 4)
    return None


def _in_se(diff: float, sd_a: float, sd_b: float, n: int) -> float | None:
    """``diff`` in standard errors of a difference of two means over ``n`` episodes each."""
    se = ((sd_a**2 + sd_b**2) / n) ** 0.5
    return round(diff / se, 1) if se > 0 else None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train_case(cfg: MAPPOConfig, episodes: int | None, upper: Any = None) -> dict[str, Any]:
    """Trains ``cfg`` for its budget; with ``episodes``, evaluates greedy and random afterwards.

    ``upper``: a factory ``(env, env_kwargs) -> Policy`` of a scripted reference, evaluated on the same episodes.
    """
    t0, cpu0, kids0 = time.perf_counter(), time.process_time(), _children_cpu()
    trainer = MAPPO(cfg, seed=0)
    out: dict[str, Any] = {}
    if episodes:
        # The untrained greedy policy on the same episodes: a greedy policy that stands still can
        # beat random without learning anything (multiwalker), so a win must also beat this.
        t_eval, cpu0_eval = time.perf_counter(), time.process_time()
        eval_env = make_batched_env(cfg.model_copy(update={"env_workers": 0}), episodes, EVAL_SEED)
        teams = team_indices(cfg, eval_env)
        out["teams"] = teams
        out["initial"] = evaluate(trainer.greedy_policy, eval_env, EVAL_SEED, teams)
        t0 += time.perf_counter() - t_eval  # evaluation is not training time
        cpu0 += time.process_time() - cpu0_eval
    for _ in range(trainer.num_updates):
        trainer.train_iteration()
    wall = time.perf_counter() - t0
    trainer.env.close()  # joins the workers, so their CPU time is counted
    steps = trainer.update_index * trainer.batch_steps
    out.update({"env_steps": steps, "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 1),
                "main_cpu_s": round(time.process_time() - cpu0, 2), "worker_cpu_s": round(_children_cpu() - kids0, 2)})
    if episodes:
        out["greedy"] = evaluate(trainer.greedy_policy, eval_env, EVAL_SEED, teams)
        out["random"] = evaluate(random_policy(eval_env, 0), eval_env, EVAL_SEED, teams)
        if upper is not None:
            out["upper"] = evaluate(upper(eval_env, cfg.env_kwargs), eval_env, EVAL_SEED, teams)
        eval_env.close()
    return out


def learners_case(cfg: MAPPOConfig) -> dict[str, Any]:
    """Trains ``cfg`` with ``cfg.workers`` local learner processes; wall time from launch to the last join."""
    from marl.distributed import LearnerJob, run_local

    t0 = time.perf_counter()
    outs = run_local(LearnerJob(config=cfg.model_dump(), seed=0))
    wall = time.perf_counter() - t0
    steps = int(outs[0]["metrics"][-1]["env_steps"])
    return {"env_steps": steps, "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 1)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--only", nargs="*", help="case names to run"))
    torch.set_num_threads(1)
    cores = os.cpu_count()
    for name, env_id, kwargs, backend, budget, quick_budget, episodes, over in CASES:
        if args.only and name not in args.only:
            continue
        steps = quick_budget if args.quick else budget
        base = {"num_envs": 32, "rollout_steps": 25, "num_minibatches": 4} if backend == "parallel" else {}
        cfg = MAPPOConfig(env=env_id, env_kwargs=kwargs, backend=backend, total_steps=steps, **{**base, **over})
        upper_key, upper = UPPER_REFERENCES.get(name, (None, None))
        res = train_case(cfg, 4 if args.quick else episodes, upper)
        load = round(os.getloadavg()[0], 2)
        for team in res["teams"]:
            sfx = "" if len(res["teams"]) == 1 else f"_{team}"
            ours, ref, init = (res[k][f"return{sfx}"] for k in ("greedy", "random", "initial"))
            sd_ours, sd_ref, sd_init = (res[k][f"return_std{sfx}"] for k in ("greedy", "random", "initial"))
            n = 4 if args.quick else episodes
            extra = {}
            if "upper" in res:
                extra = {upper_key: round(res["upper"][f"return{sfx}"], 3),
                         f"{upper_key}_std": round(res["upper"][f"return_std{sfx}"], 3)}
            line(bench="marl_envs", case=name + (f" [{team}]" if sfx else ""), unit="greedy per-agent return",
                 ours=round(ours, 3), reference=round(ref, 3), ratio=ratio(ours, ref), reference_name="random policy",
                 margin=round(ours - ref, 3), margin_se=_in_se(ours - ref, sd_ours, sd_ref, n),
                 ours_std=round(sd_ours, 3), reference_std=round(sd_ref, 3),
                 initial=round(init, 3), initial_std=round(sd_init, 3), learned=round(ours - init, 3),
                 learned_se=_in_se(ours - init, sd_ours, sd_init, n), budget_steps=res["env_steps"],
                 **extra, env_kwargs=kwargs, overrides=over, note=NOTES.get(name, ""), num_envs=cfg.num_envs, env_workers=cfg.env_workers, env_steps_per_s=res["steps_per_s"],
                 wall_s=res["wall_s"], train_cpu_s=round(res["main_cpu_s"] + res["worker_cpu_s"], 1), eval_episodes=4 if args.quick else episodes, cores=cores, load_average=load)
    # Throughput of non-batched envs: the same training with the copies stepped in the trainer's
    # process (env_workers=0, the reference) and in 1 and 2 worker processes, side by side.
    from envs.registry import make as make_env

    for name, env_id, kwargs in (("pursuit", "sisl/pursuit-v5", {"max_cycles": 100}),
                                 ("knights_archers_zombies", "butterfly/knights_archers_zombies-v11", {"max_cycles": 200})):
        # --only NAME_throughput runs this part alone (NAME runs the return case too).
        if args.only and name not in args.only and f"{name}_throughput" not in args.only:
            continue
        # 20 updates of 16 x 50 steps: fork and environment start-up (in the clock) are amortized.
        steps = 3_200 if args.quick else 16_000
        make_env(env_id, **kwargs).close()  # the env's modules imported before any side's clock starts
        rates = {}
        for env_workers in (0, 1, 2):
            load_before = round(os.getloadavg()[0], 2)
            cfg = MAPPOConfig(env=env_id, env_kwargs=kwargs, backend="parallel", total_steps=steps, num_envs=16,
                              rollout_steps=50, num_minibatches=4, env_workers=env_workers)
            rates[env_workers] = {**train_case(cfg, None), "load_average": [load_before, round(os.getloadavg()[0], 2)]}
        ref = rates[0]
        for env_workers in (1, 2):
            r = rates[env_workers]
            line(bench="marl_envs", case=f"{name} training throughput, env_workers={env_workers}", unit="env-steps/s",
                 ours=r["steps_per_s"], reference=ref["steps_per_s"], ratio=round(r["steps_per_s"] / ref["steps_per_s"], 4),
                 reference_name="same training, every copy stepped in the trainer's process (env_workers=0)",
                 env_workers=env_workers, cores=cores, cores_used=min(env_workers + 1, cores), reference_cores_used=1,
                 torch_threads=torch.get_num_threads(), num_envs=cfg.num_envs, rollout_steps=cfg.rollout_steps,
                 budget_steps=r["env_steps"], wall_s=r["wall_s"], reference_wall_s=ref["wall_s"],
                 main_cpu_s=r["main_cpu_s"], worker_cpu_s=r["worker_cpu_s"], reference_cpu_s=ref["main_cpu_s"],
                 load_average=r["load_average"], reference_load_average=ref["load_average"],
                 steps_per_s_by_env_workers={w: rates[w]["steps_per_s"] for w in rates})
        # The workers' cores are idle while the trainer updates: the update on 2 torch threads
        # (train.update_threads=2), against the same option in one process (the fair reference) too.
        upd = {w: train_case(cfg.model_copy(update={"env_workers": w, "update_threads": 2}), None) for w in (0, 2)}
        line(bench="marl_envs", case=f"{name} training throughput, env_workers=2, update_threads=2", unit="env-steps/s",
             ours=upd[2]["steps_per_s"], reference=ref["steps_per_s"], ratio=round(upd[2]["steps_per_s"] / ref["steps_per_s"], 4),
             reference_name="same training, every copy stepped in the trainer's process (env_workers=0), update on 1 thread",
             one_process_update_threads_2=upd[0]["steps_per_s"],
             ratio_to_one_process_update_threads_2=round(upd[2]["steps_per_s"] / upd[0]["steps_per_s"], 4),
             env_workers=2, update_threads=2, cores=cores, num_envs=cfg.num_envs, rollout_steps=cfg.rollout_steps,
             budget_steps=upd[2]["env_steps"], wall_s=upd[2]["wall_s"], load_average=round(os.getloadavg()[0], 2))
        # The other way to use the cores: 2 data-parallel learners (train.workers=2, marl.distributed),
        # each stepping its half of the copies in its own process and updating on its half of each
        # minibatch, gradients summed over the ring; the same optimizer steps as one process
        # (tests/marl/test_data_parallel.py). End to end: process start-up is in the clock.
        load_before = round(os.getloadavg()[0], 2)
        r = learners_case(cfg.model_copy(update={"env_workers": 0, "workers": 2}))
        line(bench="marl_envs", case=f"{name} training throughput, 2 data-parallel learners (train.workers=2)",
             unit="env-steps/s", ours=r["steps_per_s"], reference=ref["steps_per_s"],
             ratio=round(r["steps_per_s"] / ref["steps_per_s"], 4),
             reference_name="same training, every copy stepped in the trainer's process (env_workers=0)",
             workers=2, cores=cores, cores_used=min(2, cores), reference_cores_used=1, torch_threads=cfg.threads,
             num_envs=cfg.num_envs, rollout_steps=cfg.rollout_steps, budget_steps=r["env_steps"], wall_s=r["wall_s"],
             reference_wall_s=ref["wall_s"], load_average=[load_before, round(os.getloadavg()[0], 2)],
             reference_load_average=ref["load_average"])

if __name__ == "__main__":
    main()
