"""Secure aggregation: the pure protocol at scale, SecAgg+ at 10,000 clients, and inside Flower.

Three parts, one JSON line per case (see benchmarks/common.py):

1. Pure protocol (``secure_agg.simulate``), n = 100 and 500 clients, 100k-entry vectors,
   0 / 10 / 30 % of the clients dropping after they shared their keys (the expensive case
   for the server: it must rebuild their pairwise masks). Client compute time (mean and max),
   server compute time, bytes per client. There is no same-run reference implementation of
   the pure protocol; the lines carry the published anchor of Bonawitz et al. (CCS 2017,
   Java, one thread: client 0.85 s, server 2 s at 0 % and 62 s at 10 % dropout, n = 500)
   and the targets (client <= 0.5 s, server <= 10 s at 10 % dropout, n = 500).
2. SecAgg+ (random k-regular graph, k about log2 n) at n = 10,000 clients (1,000 entries):
   it must complete with the exact sum.
3. Flower simulation engine: round time of SecureFedAvg and of Flower's Message-API FedAvg on
   the same clients and the same synthetic model (10 x 100k and 50 x 1M parameters), and
   Flower's legacy SecAgg+ workflow (``SecAggPlusWorkflow`` + ``secaggplus_mod``) with the
   same clients, vector size, share count and threshold, in the same run.

``--quick`` shrinks every size (n = 20 / 50 with 20k entries, SecAgg+ at 1,000 clients,
Flower at 5 x 10k); Ray's start-up alone takes 10-40 s per Flower simulation on a loaded
2-core machine, so a quick run takes one to two minutes.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import emit, parse_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from secure_agg import default_degree, simulate  # noqa: E402

BENCH = "secagg"
ANCHOR = "Bonawitz et al. 2017 (published, Java, 1 thread; not measured here)"


def protocol_case(n: int, dim: int, rate: float, neighbours: int | None = None) -> dict[str, Any]:
    """One session; every client holds the same random vector (memory), dropouts before masking."""
    rng = np.random.default_rng(n)
    holders = n if neighbours is None else neighbours + 1
    t = holders // 2 + 1
    vector = rng.integers(0, (2**32 - 1) // n, size=dim, dtype=np.int64).astype(np.uint32)
    drop = sorted(rng.choice(n, size=int(round(rate * n)), replace=False).tolist())
    t0 = time.perf_counter()
    result = simulate([vector] * n, t, dropouts={"masked_input": drop}, neighbours=neighbours, seed=1)
    wall = time.perf_counter() - t0
    exact = bool(np.array_equal(result.aggregate, vector.astype(np.int64) * len(result.survivors)))
    survivors = result.survivors
    client = [result.client_seconds[u] for u in survivors]
    return {"client_mean_s": statistics.fmean(client), "client_max_s": max(client),
            "server_s": result.server_seconds, "wall_s": wall, "exact": exact, "threshold": t,
            "survivors": len(survivors),
            "bytes_sent": statistics.fmean(result.bytes_sent[u] for u in survivors),
            "bytes_received": statistics.fmean(result.bytes_received[u] for u in survivors),
            "bytes_per_client": statistics.fmean(result.bytes_sent[u] + result.bytes_received[u] for u in survivors)}


def bench_protocol(quick: bool) -> None:
    sizes = [(20, 20_000), (50, 20_000)] if quick else [(100, 100_000), (500, 100_000)]
    for n, dim in sizes:
        for rate in (0.0, 0.1, 0.3):
            r = protocol_case(n, dim, rate)
            case = f"protocol n={n} dim={dim} dropout={rate:.0%}"
            anchor_client = 0.85 if n == 500 else None
            anchor_server = {0.0: 2.0, 0.1: 62.0}.get(rate) if n == 500 else None
            extra = {"exact": r["exact"], "threshold": r["threshold"], "survivors": r["survivors"]}
            emit(BENCH, case + " client", "s", r["client_mean_s"], anchor_client, reference_name=ANCHOR,
                 higher_is_better=False, client_max_s=round(r["client_max_s"], 4),
                 target_s=0.5 if n == 500 else None, **extra)
            emit(BENCH, case + " server", "s", r["server_s"], anchor_server, reference_name=ANCHOR,
                 higher_is_better=False, target_s=10.0 if (n == 500 and rate == 0.1) else None, **extra)
            emit(BENCH, case + " bytes sent", "bytes/client", r["bytes_sent"], dim * 4, reference_name=
                 "the plain update (dim x 4 bytes, sent in the clear)", higher_is_better=False,
                 bytes_received=r["bytes_received"], **extra)


def bench_secagg_plus(quick: bool) -> None:
    n, dim = (1000, 1000) if quick else (10_000, 1000)
    k = default_degree(n)
    r = protocol_case(n, dim, 0.05, neighbours=k)
    emit(BENCH, f"secagg+ n={n} k={k} dim={dim} dropout=5%", "s", r["wall_s"], None,
         reference_name="must complete (no reference)", higher_is_better=False, exact=r["exact"],
         client_mean_s=round(r["client_mean_s"], 5), client_max_s=round(r["client_max_s"], 4),
         server_s=round(r["server_s"], 3), bytes_per_client=r["bytes_per_client"], threshold=r["threshold"])


# --- Flower ---------------------------------------------------------------------------------

def synthetic_train(arrays: Any, context: Any, server_round: int) -> tuple[dict[str, np.ndarray], int, float]:
    """A stand-in for local training whose cost is negligible: shift every weight by 0.001 * (pid + 1)."""
    pid = int(context.node_config["partition-id"])
    w = {k: (v.numpy() + np.float32(0.001 * (pid + 1))).astype(np.float32) for k, v in arrays.items()}
    return w, 100, 1.0


def _backend(num_cpus: int) -> dict[str, Any]:
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"address": "local", "num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False,
                          "logging_level": "ERROR", "log_to_driver": False}}


def flower_ours(n: int, params: int, rounds: int, neighbours: int, threshold: float) -> tuple[list[float], list[float], bool]:
    """Per-round seconds of plain FedAvg and SecureFedAvg from the same model (mode ``both``)."""
    from federated.secure_server_app import simulate_secure

    overrides = {"num-server-rounds": rounds, "num-partitions": n, "fraction-evaluate": 0.0,
                 "secagg-neighbours": neighbours, "secagg-threshold": threshold, "secagg-seed": 0,
                 "round-timeout": 600.0}
    result = simulate_secure(overrides, n, mode="both", local_train=synthetic_train,
                             initial={"w": np.zeros(params, np.float32)}, evaluate=False)
    hist = result["history"]
    ok = all(r["max_abs_diff"] <= r["error_bound"] + 1e-6 for r in hist)
    return ([r["timing"]["plain_round_seconds"] for r in hist],
            [r["timing"]["secure_round_seconds"] for r in hist], ok)


def flower_legacy_secaggplus(n: int, params: int, rounds: int, num_shares: int, threshold: int) -> list[float]:
    """Per-round seconds of Flower's legacy SecAgg+ workflow (configure_fit to aggregate_fit)."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Grid, LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    times: list[float] = []

    class TimedFedAvg(LegacyFedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self._t0 = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            times.append(time.perf_counter() - self._t0)
            return out

    class Synthetic(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            return [(p + np.float32(0.001 * (self.pid + 1))).astype(np.float32) for p in parameters], 100, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return Synthetic(int(context.node_config["partition-id"])).to_client()

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                               initial_parameters=ndarrays_to_parameters([np.zeros(params, np.float32)]))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=num_shares,
                                                        reconstruction_threshold=threshold))(grid, legacy)

    run_simulation(server_app=server, client_app=ClientApp(client_fn=client_fn, mods=[secaggplus_mod]),
                   num_supernodes=n, backend_config=_backend(2))  # type: ignore[arg-type]
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return times


def bench_flower(quick: bool) -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # (clients, parameters, SecAgg+ shares, threshold): Flower's share count and threshold; ours
    # uses the same number of share holders (neighbours = shares - 1) and the same t.
    cases = [(5, 10_000, 5, 3)] if quick else [(10, 100_000, 10, 6), (50, 1_000_000, 11, 6)]
    rounds = 2 if quick else 3
    for n, params, shares, t in cases:
        neighbours = 0 if shares >= n else shares - 1
        holders = n if neighbours == 0 else neighbours + 1
        plain, secure, ok = flower_ours(n, params, rounds, neighbours, threshold=t / holders)
        legacy = flower_legacy_secaggplus(n, params, rounds, shares, t)
        # Round 1 includes the actors' first import and warm-up: report the later rounds.
        p, s, lg = statistics.median(plain[1:]), statistics.median(secure[1:]), statistics.median(legacy[1:])
        case = f"flower {n}x{params} shares={shares} t={t}"
        emit(BENCH, case + " ours vs plain FedAvg", "s/round", s, p, reference_name="Flower FedAvg (Message API)",
             higher_is_better=False, overhead=round(s / p, 3), target_overhead=1.1 if params <= 100_000 else 1.3,
             matches_fedavg_within_bound=ok, rounds=rounds)
        emit(BENCH, case + " ours vs Flower SecAgg+", "s/round", s, lg,
             reference_name="Flower legacy SecAggPlusWorkflow + secaggplus_mod", higher_is_better=False,
             legacy_overhead_over_plain=round(lg / p, 3), rounds=rounds)


PARTS = {"protocol": bench_protocol, "plus": bench_secagg_plus, "flower": bench_flower}


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--parts", default="protocol,plus,flower",
                       help=f"comma-separated parts to run, from {', '.join(PARTS)}")

    args = parse_args(__doc__.splitlines()[0], extra)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        sys.exit(f"--parts: unknown {unknown}; allowed: {', '.join(PARTS)}")
    for name in parts:
        PARTS[name](args.quick)


if __name__ == "__main__":
    main()
