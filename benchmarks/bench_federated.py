"""Seconds per FedAvg round on Flower's simulation engine, split into client compute and engine
overhead, against the same clients trained in a plain Python loop without Flower.

For N clients (IID digits, 5 local epochs each) one line per N::

    ours       median seconds per round in the simulation engine (round 1, which starts the
               Ray actors, is left out)
    reference  seconds per round of the plain loop: every client's training one after another
    slowest_client_s   the slowest client's training time in a round (the critical path with
                       enough workers), engine_overhead_s = ours - slowest_client_s

With ``num_cpus`` actors (2 here) the engine can overlap at most two clients, so at N clients
the ideal round is about N / 2 client-times; the rest is Flower's messaging and Ray's overhead.
"""

from __future__ import annotations

import statistics

from benchmarks.common import emit, parse_args
from federated.reference import plain_fedavg  # noqa: E402
from federated.settings import FedSettings  # noqa: E402
from federated.simulation import simulate  # noqa: E402


def measure(num_clients: int, rounds: int, num_cpus: int) -> None:
    settings = FedSettings(num_partitions=num_clients, num_server_rounds=rounds, partitioner="iid",
                           fraction_evaluate=0.0, round_timeout=600.0)
    plain = plain_fedavg(settings, evaluate=False)
    plain_round = statistics.median(h["timing"]["round_seconds"] for h in plain["history"][1:])
    client_mean = statistics.mean(s for h in plain["history"][1:] for s in h["timing"]["client_seconds"])
    sim = simulate(settings, num_cpus=num_cpus)
    later = [h["timing"] for h in sim["history"] if h["round"] >= 2]
    round_s = statistics.median(t["round_seconds"] for t in later)
    slowest = statistics.median(t["slowest_client_seconds"] for t in later)
    emit("federated", f"simulation round N={num_clients}", "s/round", round(round_s, 4), round(plain_round, 4),
         reference_name="same clients in a plain Python loop (no Flower)", higher_is_better=False,
         slowest_client_s=round(slowest, 4), engine_overhead_s=round(round_s - slowest, 4),
         plain_client_mean_s=round(client_mean, 5), ray_cpus=num_cpus, rounds_measured=len(later),
         same_model=all((sim["weights"][k] == v).all() for k, v in plain["weights"].items()))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds = 3 if args.quick else 6
    for n in (10, 100):
        measure(n, rounds, num_cpus=2)


if __name__ == "__main__":
    main()
