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
3. Flower simulation engine: steady-state round time of SecureFedAvg (= SecureAggregation(FedAvg()),
   the project's ClientApp carrying secure_agg_mod) and of Flower's
   Message-API FedAvg, both run by Flower's own round loop (``Strategy.start``) on the same
   clients (10 x 100k and 50 x 1M parameters); the same FedAvg rounds on SecureFedAvg's
   faster polling (so the difference is the protocol alone); the floor of any protocol that
   must learn the survivors before unmasking (FedAvg plus one exchange of empty messages; the
   floor and ours run two loops each, in the order floor, ours, ours, floor, so that a drift of
   a shared machine's speed during the case moves both alike);
   and Flower's legacy SecAgg+
   workflow (``SecAggPlusWorkflow`` + ``secaggplus_mod``) with the same clients, vector
   size, share count and threshold. Two workloads: a local update of negligible cost (the
   engine's floor, where each extra message exchange shows fully) and the digits task's
   local training (federated.task's MLP sized to the parameter count, 5 local epochs).
   Targets: ours at most 1.05x the floor at 10 x 100k and 1.3x at 50 x 1M, faster than
   Flower's SecAgg+ in every case; ``active`` at most 1.5x the semi-honest round at 50 x 1M.

``--parts``, ``--sizes`` and ``--workloads`` pick a subset (e.g. ``--parts flower --sizes 50x1000000
--workloads zero-cost``). Every Flower line carries the 1-minute load average (``load_avg_1m``)
and the line against the floor the median seconds of each secure phase (``secure_phases_s``).

``--quick`` shrinks every size (n = 20 / 50 with 20k entries, SecAgg+ at 1,000 clients,
Flower at 5 x 10k, the negligible-cost update only); Ray's start-up alone takes 10-40 s per Flower simulation on a loaded
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
    """A local update whose cost is negligible: shift every weight by 0.001 * (pid + 1).

    ``arrays``: an ArrayRecord (Message API) or numpy arrays by name (a legacy NumPyClient).
    """
    pid = int(context.node_config["partition-id"])
    w = {k: (np.asarray(v.numpy() if hasattr(v, "numpy") else v) + np.float32(0.001 * (pid + 1))).astype(np.float32)
         for k, v in arrays.items()}
    return w, 100, 1.0


def _workload(workload: str, n: int, params: int) -> tuple[dict[str, np.ndarray], Any, dict[str, Any]]:
    """(initial model, local training, run-config overrides) of ``workload`` for ``n`` clients."""
    from functools import partial

    from federated.secure_client_app import train_task_model

    overrides: dict[str, Any] = {"num-partitions": n, "fraction-evaluate": 0.0}
    if workload != "digits":
        return {"w": np.zeros(params, np.float32)}, synthetic_train, overrides
    from federated.arrays import to_numpy
    from federated.task import get_weights, load_model

    overrides["hidden"] = hidden_for(params)
    initial = to_numpy(get_weights(load_model("digits", overrides["hidden"], 0)))
    return initial, partial(train_task_model, overrides=overrides), overrides


def hidden_for(params: int) -> int:
    """The hidden width of federated.task's digits MLP (64 -> h -> 10: 75 h + 10 weights) nearest ``params``."""
    return max(1, round((params - 10) / 75))


def _backend(num_cpus: int) -> dict[str, Any]:
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"address": "local", "num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False,
                          "logging_level": "ERROR", "log_to_driver": False}}


def _timed(cls: type, times: list[float], phases: list[dict[str, float]] | None = None) -> type:
    """``cls`` (a Message-API strategy) recording each round from configure_train to aggregate_train.

    ``phases``: for SecureAggregation, each round's ``last_round.seconds`` (where the time went).
    """

    class Timed(cls):  # type: ignore[misc, valid-type]
        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            self._t0 = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            out = super().aggregate_train(server_round, replies)
            times.append(time.perf_counter() - self._t0)
            if phases is not None and hasattr(self, "last_round"):
                phases.append(dict(self.last_round.seconds))
            return out

    return Timed


def flower_ours(n: int, params: int, rounds: int, neighbours: int, threshold: float,
                workload: str) -> dict[str, list[float]]:
    """Per-round seconds of five loops over the same clients, one simulation.

    ``plain``: Flower's FedAvg run by Flower's own round loop (``Strategy.start``);
    ``plain_fast``: the same FedAvg rounds pushed and pulled with SecureFedAvg's polling
    (federated.secure_fedavg.exchange), so that the difference to ``secure`` is the protocol
    alone; ``floor``: FedAvg plus one exchange of empty messages, by ``Strategy.start``;
    ``secure``: SecureFedAvg run by ``Strategy.start`` (the semi-honest default);
    ``active``: the same with ``active=True`` (signed keys, a consistency-check exchange),
    when the installed secure_agg has it.
    """
    import inspect

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from federated.secure_client_app import make_secure_client_app
    from federated.secure_fedavg import SecAggParams, SecureFedAvg, exchange
    from federated.simulation import run_apps
    from secure_agg import SecAggServer

    times: dict[str, Any] = {"plain": [], "plain_fast": [], "floor": [], "secure": [], "active": [],
                             "secure_phases": [], "active_phases": [], "floor_phases": [],
                             "floor_first": [], "secure_first": [], "active_first": []}
    has_active = "active" in inspect.signature(SecAggServer.__init__).parameters

    class OneMoreExchange(FedAvg):
        """FedAvg plus one exchange of empty messages before aggregating: the floor of any
        secure aggregation that must learn who survived before it can unmask (Bonawitz et al.
        and every protocol built on it)."""

        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self._grid, self._nodes = grid, [m.metadata.dst_node_id for m in messages]
            return messages

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            empty = [Message(RecordDict({}), message_type="query.noop", dst_node_id=node) for node in self._nodes]
            exchange(self._grid, empty, 600)
            return super().aggregate_train(server_round, replies)

    initial, local_train, overrides = _workload(workload, n, params)
    secagg = SecAggParams(neighbours=neighbours, threshold=threshold, seed=0)
    active = SecAggParams(neighbours=neighbours, threshold=threshold, seed=0, active=True)

    def key_of(pid: int) -> bytes:
        # Benchmark identities: a fixed raw Ed25519 private key per client (never do this outside a benchmark).
        return bytes([pid % 251 + 1, pid // 251 + 1]) * 16

    def identity(context: Context) -> tuple[bytes, list[bytes]]:
        from secure_agg import crypto

        return (key_of(int(context.node_config["partition-id"])),
                [crypto.signing_public_key(key_of(i)) for i in range(n)])
    server = ServerApp()
    sink: list[Any] = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            arrays = ArrayRecord({k: Array(v) for k, v in initial.items()})
            nodes = {"fraction_evaluate": 0.0, "min_available_nodes": n, "min_train_nodes": n}
            _timed(FedAvg, times["plain"])(**nodes).start(grid, arrays, num_rounds=rounds)
            fast = FedAvg(**nodes)
            for r in range(1, rounds + 1):
                t0 = time.perf_counter()
                fast.aggregate_train(r, exchange(grid, list(fast.configure_train(r, arrays, ConfigRecord(), grid)), 600))
                times["plain_fast"].append(time.perf_counter() - t0)

            def steady(kind: str, cls: type, *args: Any) -> None:
                # One Strategy.start loop; its round 1 (the first session opening, for ours) is
                # kept apart from the steady-state rounds.
                got: list[float] = []
                phases: list[dict[str, float]] = []
                _timed(cls, got, phases)(*args, **nodes).start(grid, arrays, num_rounds=rounds)
                times[f"{kind}_first"].append(got[0])
                times[kind].extend(got[1:])
                times[f"{kind}_phases"].extend(phases[1:])

            # The floor and ours alternate, floor-ours-ours-floor: on a shared machine whose speed
            # drifts during a case, a drift moves both alike instead of whichever ran later.
            loops = {"floor": (OneMoreExchange,), "secure": (SecureFedAvg, secagg)}
            for kind in ("floor", "secure", "secure", "floor"):
                steady(kind, *loops[kind])
            if has_active:
                steady("active", SecureFedAvg, active)
            sink.append(times)
        except Exception as exc:  # run_apps re-raises it in this process
            sink.append(exc)
            raise

    client = make_secure_client_app(overrides, local_train, identity=identity if has_active else None,
                                    allow_semi_honest=True)

    @client.query("noop")
    def noop(msg: Message, context: Context) -> Message:
        return Message(RecordDict({}), reply_to=msg)

    run_apps(server, client, n, sink, num_cpus=2)
    return times


def flower_legacy_secaggplus(n: int, params: int, rounds: int, num_shares: int, threshold: int,
                             workload: str) -> list[float]:
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
    initial, local_train, _ = _workload(workload, n, params)

    class TimedFedAvg(LegacyFedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self._t0 = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            times.append(time.perf_counter() - self._t0)
            return out

    class Client(NumPyClient):
        """The same local update as SecureFedAvg's clients, on the arrays a NumPyClient holds."""

        def __init__(self, context: Context) -> None:
            self.context = context

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            weights = dict(zip(initial, parameters, strict=True))
            out, count, _ = local_train(weights, self.context, int(config.get("server_round", 1)))
            return list(out.values()), count, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return Client(context).to_client()

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                               initial_parameters=ndarrays_to_parameters(list(initial.values())))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=num_shares,
                                                        reconstruction_threshold=threshold))(grid, legacy)

    run_simulation(server_app=server, client_app=ClientApp(client_fn=client_fn, mods=[secaggplus_mod]),
                   num_supernodes=n, backend_config=_backend(2))  # type: ignore[arg-type]
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return times


def _median_phases(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median seconds of each phase SecureAggregation timed, over the steady-state rounds."""
    names = sorted({k for r in rounds for k in r})
    return {k: round(statistics.median(r.get(k, 0.0) for r in rounds), 4) for k in names}


FLOWER_CASES = {"10x100000": (10, 100_000, 10, 6), "50x1000000": (50, 1_000_000, 11, 6)}
WORKLOADS = ("zero-cost", "digits")


def bench_flower(quick: bool, sizes: list[str] | None = None, workloads: list[str] | None = None) -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # (clients, parameters, SecAgg+ shares, threshold): Flower's share count and threshold; ours
    # uses the same number of share holders (neighbours = shares - 1) and the same t.
    cases = [(5, 10_000, 5, 3)] if quick else [FLOWER_CASES[k] for k in (sizes or FLOWER_CASES)]
    workloads = ["zero-cost"] if quick else list(workloads or WORKLOADS)
    # Steady-state medians over rounds 2..6 of each loop (five samples; ten for the floor and ours, which
    # run two loops each, floor-ours-ours-floor): one slow or fast round moves them little.
    rounds = 3 if quick else 6
    for workload in workloads:
        for n, params, shares, t in cases:
            neighbours = 0 if shares >= n else shares - 1
            holders = n if neighbours == 0 else neighbours + 1
            times = flower_ours(n, params, rounds, neighbours, t / holders, workload)
            legacy = flower_legacy_secaggplus(n, params, rounds, shares, t, workload)
            # Round 1 warms the actors (plain) or opens the first session (secure): report the
            # steady state, rounds 2 on; round 1 of the secure loop is printed beside it.
            p, pf, lg = (statistics.median(x[1:]) for x in (times["plain"], times["plain_fast"], legacy))
            # The floor's and ours' lists hold steady-state rounds only (two loops each).
            fl, s = statistics.median(times["floor"]), statistics.median(times["secure"])
            what = ("local update of negligible cost" if workload == "zero-cost" else
                    f"digits MLP 64-{hidden_for(params)}-10, 5 local epochs (federated.task)")
            case = f"flower {n}x{params} shares={shares} t={t} {workload}"
            # The machine is shared: the 1-minute load average at the end of the case goes with every number.
            common = {"workload": what, "rounds": rounds, "secure_first_round_s": round(times["secure_first"][0], 4),
                      "floor_and_ours_order": "floor, ours, ours, floor", "steady_rounds_each": len(times["secure"]),
                      "load_avg_1m": round(os.getloadavg()[0], 2)}
            emit(BENCH, case + " ours vs plain FedAvg", "s/round", s, p,
                 reference_name="Flower FedAvg, Message API, Flower's round loop (Strategy.start)",
                 higher_is_better=False, overhead=round(s / p, 3),
                 target_overhead=1.1 if params <= 100_000 else 1.3, **common)
            emit(BENCH, case + " floor: plain FedAvg + one empty exchange", "s/round", fl, p,
                 reference_name="Flower FedAvg, Message API, Flower's round loop (Strategy.start)",
                 higher_is_better=False, overhead=round(fl / p, 3), **common)
            emit(BENCH, case + " ours vs the one-extra-exchange floor", "s/round", s, fl,
                 reference_name="plain FedAvg + one exchange of empty messages (Strategy.start)",
                 higher_is_better=False, ours_over_floor=round(s / fl, 3),
                 secure_phases_s=_median_phases(times["secure_phases"]),
                 target_over_floor=1.05 if params <= 100_000 else 1.3, **common)
            if times["active"]:
                act = statistics.median(times["active"])
                emit(BENCH, case + " active vs semi-honest", "s/round", act, s,
                     reference_name="ours, semi-honest (the default), same clients and rounds",
                     higher_is_better=False, active_over_semi_honest=round(act / s, 3),
                     target=1.5 if params >= 1_000_000 else None, active_first_round_s=round(times["active_first"][0], 4),
                     active_phases_s=_median_phases(times["active_phases"]),
                     **common)
            emit(BENCH, case + " ours vs plain FedAvg on our polling", "s/round", s, pf,
                 reference_name="the same FedAvg rounds pushed/pulled with SecureFedAvg's exchange()",
                 higher_is_better=False, overhead=round(s / pf, 3), **common)
            emit(BENCH, case + " ours vs Flower SecAgg+", "s/round", s, lg,
                 reference_name="Flower legacy SecAggPlusWorkflow + secaggplus_mod", higher_is_better=False,
                 legacy_overhead_over_plain=round(lg / p, 3), **common)


PARTS = {"protocol": bench_protocol, "plus": bench_secagg_plus, "flower": bench_flower}


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--parts", default="protocol,plus,flower",
                       help=f"comma-separated parts to run, from {', '.join(PARTS)}")
        p.add_argument("--sizes", default=",".join(FLOWER_CASES),
                       help=f"flower part: comma-separated clients x params, from {', '.join(FLOWER_CASES)}")
        p.add_argument("--workloads", default=",".join(WORKLOADS),
                       help=f"flower part: comma-separated local updates, from {', '.join(WORKLOADS)}")

    args = parse_args(__doc__.splitlines()[0], extra)
    chosen = {}
    for flag, allowed in (("parts", PARTS), ("sizes", FLOWER_CASES), ("workloads", WORKLOADS)):
        chosen[flag] = [x.strip() for x in getattr(args, flag).split(",") if x.strip()]
        unknown = sorted(set(chosen[flag]) - set(allowed))
        if unknown:
            sys.exit(f"--{flag}: unknown {unknown}; allowed: {', '.join(allowed)}")
    for name in chosen["parts"]:
        if name == "flower":
            bench_flower(args.quick, chosen["sizes"], chosen["workloads"])
        else:
            PARTS[name](args.quick)


if __name__ == "__main__":
    main()
