"""What a parameter-server run returns: the servers' outputs merged into the full model's view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from capabilities.training.param_server.task import LeastSquares


@dataclass
class PSResult:
    """What a run returns: final parameters, the loss-vs-time curve, and every pull's gap."""

    params: torch.Tensor
    curve: list[tuple[float, float]]  # (seconds since start, loss of the servers' model on all
    # data): the initial point, then one point per update applied by any server
    pull_gaps: list[int]  # worker clock minus slowest clock, for every answered pull
    extra: dict[str, Any] = field(default_factory=dict)


def merge_servers(servers: list[dict[str, Any]], task: LeastSquares, num_workers: int) -> PSResult:
    """The final parameters, the loss-vs-time curve and the pull gaps of the servers' outputs.

    Args:
        servers: Each server's output (``shard``, ``params``, ``snapshots``, ``pulls``, ``rounds``).
        task: The task, for the loss on all workers' data.
        num_workers: W.
    """
    servers = sorted(servers, key=lambda o: o["shard"])
    xs, ys = zip(*(task.data(w, num_workers) for w in range(num_workers)), strict=True)
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    # Merge the shards' snapshots in time order into the full model's trajectory.
    events = sorted((t, s["shard"], v) for s in servers for t, _, v in s["snapshots"][1:])
    current = [s["snapshots"][0][2] for s in servers]
    curve = [(0.0, task.loss(torch.cat(current), x_all, y_all))]
    for t, shard, v in events:
        current[shard] = v
        curve.append((t, task.loss(torch.cat(current), x_all, y_all)))
    gaps = [c - slow for s in servers for _, c, slow in s["pulls"]]
    return PSResult(torch.cat([s["params"] for s in servers]), curve, gaps,
                    {"rounds": [s["rounds"] for s in servers]})
