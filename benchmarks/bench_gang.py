"""Gang scheduling: all-or-nothing and rack-aware placement against greedy per-worker placement.

The same seeded workloads go through the three policies of the discrete-event simulator in
this run; greedy per-worker placement is the reference (what a per-pod scheduler does). Cases:
jobs completed (greedy deadlocks under load), goodput, and mean job completion time.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import emit, parse_args
from capabilities.cluster import gang as G


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    cluster = G.ClusterSpec(racks=4, nodes_per_rack=4, slots_per_node=4)
    trials = 3 if args.quick else 20
    n_jobs = 100 if args.quick else 400
    for rate in (0.5, 2.0):
        res: dict[str, list[G.SimResult]] = {p: [] for p in G.POLICIES}
        for seed in range(trials):
            jobs = G.generate_jobs(n_jobs, cluster, arrival_rate=rate, worker_choices=[1, 2, 4, 8, 16, 32], seed=seed)
            for p in G.POLICIES:
                res[p].append(G.simulate(jobs, cluster, p))
        windows = [max(res[p][i].end_time for p in G.POLICIES) for i in range(trials)]

        goodput = {p: float(np.mean([r.goodput(w if r.deadlocked else None) for r, w in zip(res[p], windows, strict=True)]))
                   for p in G.POLICIES}

        done = {p: float(np.mean([len(r.completed) for r in res[p]])) for p in G.POLICIES}
        dead = {p: sum(r.deadlocked for r in res[p]) for p in G.POLICIES}
        case = f"rate {rate}, {n_jobs} jobs x {trials} workloads, 64 slots"
        emit("gang", f"jobs completed, {case}", "jobs", done["gang"], done["greedy"],
             reference_name="greedy per-worker placement", deadlocks_ours=dead["gang"], deadlocks_reference=dead["greedy"])
        emit("gang", f"goodput, {case}", "fraction", goodput["rack_aware"], goodput["greedy"],
             reference_name="greedy per-worker placement")
        emit("gang", f"mean JCT rack-aware vs spread gang, {case}", "time units",
             float(np.mean([r.mean_jct for r in res["rack_aware"]])), float(np.mean([r.mean_jct for r in res["gang"]])),
             reference_name="all-or-nothing gang, spread placement", higher_is_better=False)


if __name__ == "__main__":
    main()
