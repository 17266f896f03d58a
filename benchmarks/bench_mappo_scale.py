"""MAPPO scale-out vs scale-up: training env-steps/s with 1, 2, 4 learner processes and threads.

The claim measured: ``train.workers = N`` data-parallel learners (each steps 1/N of the
vectorized simple_spread environments and sums its minibatch gradients over the ring
all-reduce) against one process with one thread, the reference measured in the same run; and
one process with N torch threads against the same reference. Each case trains the same fixed
budget from the same seed (the learners take one process's optimizer steps), on local
processes started by the project's launcher; the clock runs from the first update to the last
(process start-up left out). Each line also says how a learner's update splits into its own
compute and its time in the ring (waiting included), its CPU seconds per update (its own work,
whatever the other tenants take), the cores and the load average: on a
machine with fewer free cores than processes, scale-out cannot win, and the line shows it.
"""

from __future__ import annotations

import os

from benchmarks.common import emit, parse_args
from marl.distributed import LearnerJob, run_local
from marl.mappo import MAPPOConfig


def rate(cfg: MAPPOConfig, seed: int = 0) -> dict[str, float]:
    """Trains ``cfg`` on its learners; env-steps/s and rank 0's compute/ring split per update."""
    outs = run_local(LearnerJob(config=cfg.model_dump(), seed=seed))
    times = outs[0]["times"]
    steps = outs[0]["metrics"][-1]["env_steps"]
    ring = max(o["allreduce_s"][-1] for o in outs)
    return {"steps_per_s": steps / times[-1], "wall_s": times[-1], "env_steps": steps,
            "ring_s_per_update": ring / len(times), "compute_s_per_update": (times[-1] - ring) / len(times),
            "cpu_s_per_update": max(o["cpu_s"][-1] for o in outs) / len(times)}


def main() -> None:
    args = parse_args(__doc__.split("\n")[0])
    budget = 12_800 * (1 if args.quick else 10)  # 128 environments x 25 steps = 3,200 per update
    base = MAPPOConfig(total_steps=budget, num_envs=128)
    cores = os.cpu_count()
    ref = rate(base)
    for how in ("workers", "threads"):
        for n in (1, 2, 4):
            if n == 1 and how == "threads":
                continue  # the same run as one learner
            cfg = base.model_copy(update={how: n})
            r = ref if n == 1 else rate(cfg)
            emit("mappo_scale", f"{n} {'learner processes' if how == 'workers' else 'threads, one process'}", "env-steps/s",
                 round(r["steps_per_s"], 1), round(ref["steps_per_s"], 1),
                 reference_name="one process, one thread, same budget and seed", how=how, n=n, cores=cores,
                 budget_steps=r["env_steps"], wall_s=round(r["wall_s"], 2),
                 compute_s_per_update=round(r["compute_s_per_update"], 4), ring_s_per_update=round(r["ring_s_per_update"], 4),
                 cpu_s_per_update=round(r["cpu_s_per_update"], 4),
                 load_average=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
