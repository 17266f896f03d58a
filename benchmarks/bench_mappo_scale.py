"""MAPPO scale-out vs scale-up: training env-steps/s with 1, 2, 4 learner processes and threads.

The claim measured: ``train.workers = N`` data-parallel learners (each steps 1/N of the
vectorized simple_spread environments and sums its minibatch gradients over the ring
all-reduce) against one process with one thread, the reference measured in the same run; and
one process with N torch threads against the same reference. Each case trains the same fixed
budget from the same seed (the learners take one process's optimizer steps), on local
processes started by the project's launcher; the clock runs from the first update to the last
(process start-up and greedy evaluations left out). Each line also says how a learner's update
splits into its own compute and its time in the ring (waiting included), its CPU seconds per
update (its own work, whatever the other tenants take), the cores and the load average: on a
machine with fewer free cores than processes, scale-out cannot win, and the line shows it.

``--to-target`` trains the ``mappo_scale_out`` config's own budget instead (1.2M env steps,
greedy evaluations every 10 updates, minutes per case) and prints, beside each case's
env-steps/s, the seconds to the config's target return (-14) against one process's seconds
(``ours`` None where the run did not reach it).
"""

from __future__ import annotations

import os

from benchmarks.common import emit, parse_args
from experiments.mappo_scale import ScaleOutConfig, measure
from experiments.runner import prepare
from marl.mappo import MAPPOConfig


def _cases() -> list[tuple[str, int]]:
    """(how, N): one process with one thread first, the reference of every other case."""
    return [("workers", 1)] + [(how, n) for how in ("workers", "threads") for n in (2, 4)]


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], lambda p: p.add_argument(
        "--to-target", action="store_true", help="train the mappo_scale_out config's budget; also print seconds to its target"))
    if args.to_target:
        cfg = prepare("mappo_scale_out")[1]
    else:
        budget = 12_800 * (1 if args.quick else 10)  # 128 environments x 25 steps = 3,200 per update
        # Only the last update is evaluated (off the clock): the throughput cases need no curve.
        cfg = ScaleOutConfig(train=MAPPOConfig(total_steps=budget, num_envs=128), eval_every=10**6, eval_episodes=10)
    cores = os.cpu_count()
    ref: dict = {}
    for how, n in _cases():
        r = measure(cfg, how, n)
        ref = ref or r
        case = f"{n} {('learner process' + 'es' * (n > 1)) if how == 'workers' else 'threads, one process'}"
        common = {"how": how, "n": n, "cores": cores, "budget_steps": r["env_steps"], "load_average": round(r["load_average"], 2)}
        emit("mappo_scale", case, "env-steps/s", round(r["env_steps_per_s"], 1), round(ref["env_steps_per_s"], 1),
             reference_name="one process, one thread, same budget and seed", **common, wall_s=round(r["wall_s"], 2),
             compute_s_per_update=round(r["compute_s_per_update"], 4), ring_s_per_update=round(r["ring_s_per_update"], 4),
             cpu_s_per_update=round(r["cpu_s_per_update"], 4))
        if args.to_target:
            secs = r["seconds_to_target"]
            emit("mappo_scale", case, f"seconds to return {cfg.target_return:g}", None if secs is None else round(secs, 2),
                 None if ref["seconds_to_target"] is None else round(ref["seconds_to_target"], 2),
                 reference_name="one process, one thread, same config and seed", higher_is_better=False, **common,
                 steps_to_target=r["steps_to_target"], reference_steps_to_target=ref["steps_to_target"],
                 final_return=r["final_return"])


if __name__ == "__main__":
    main()
