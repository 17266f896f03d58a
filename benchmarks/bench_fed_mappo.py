"""Seconds and bytes per federated MAPPO round: secure aggregation against plain FedAvg.

For S sites (each training MAPPO briefly on its own simple_spread, see
:mod:`federated.fed_mappo`) on Flower's simulation engine, one run aggregated plainly and one
securely, two JSON lines per S::

    s/round      ours = median wall seconds of a secure round, reference = of a plain round
    bytes/round  ours = payload bytes through the server in a secure round (protocol messages
                 both ways), reference = in a plain round (actor weights both ways)

Round 1 (Ray actors starting, and the secure session's opening exchanges) is left out of the
medians and reported beside them. Secure aggregation runs as the ``fed_mappo`` experiment runs
it: 64-bit words and every site's weight exactly 1 (its average is then FedAvg's, bit for bit
at 2 sites). ``--quick``: 4 sites only, 3 rounds.
"""

from __future__ import annotations

import json
import statistics

from benchmarks.common import emit, parse_args
from federated.fed_mappo import FedMAPPOSettings, simulate
from federated.secure_aggregation import SecAggParams

TRAIN = json.dumps({"num_envs": 4, "num_minibatches": 2, "update_epochs": 1})


def measure(sites: int, rounds: int) -> None:
    timing = {}
    for agg in ("plain", "secure"):
        settings = FedMAPPOSettings.create(num_server_rounds=rounds, num_sites=sites, local_steps=100, train=TRAIN,
                                           eval_episodes=0, aggregation=agg,
                                           secagg=SecAggParams(max_weight=100, bits=64))
        hist = simulate(settings)["history"][1:]
        timing[agg] = hist
    med = {agg: {"s": statistics.median(r["timing"]["round_seconds"] for r in h[1:]),
                 "b": statistics.median(r["timing"]["bytes_out"] + r["timing"]["bytes_in"] for r in h[1:]),
                 "s1": h[0]["timing"]["round_seconds"], "b1": h[0]["timing"]["bytes_out"] + h[0]["timing"]["bytes_in"]}
           for agg, h in timing.items()}
    common = dict(reference_name="plain FedAvg of the same sites (RobustFedAvg)", higher_is_better=False,
                  rounds_measured=rounds - 1)
    emit("fed_mappo", f"round S={sites}", "s/round", round(med["secure"]["s"], 4), round(med["plain"]["s"], 4),
         secure_round1_s=round(med["secure"]["s1"], 3), plain_round1_s=round(med["plain"]["s1"], 3), **common)
    emit("fed_mappo", f"round S={sites}", "bytes/round", med["secure"]["b"], med["plain"]["b"],
         secure_round1_bytes=med["secure"]["b1"], plain_round1_bytes=med["plain"]["b1"], **common)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    for sites in (4,) if args.quick else (4, 16):
        measure(sites, 3 if args.quick else 4)


if __name__ == "__main__":
    main()
