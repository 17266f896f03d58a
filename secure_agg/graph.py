"""SecAgg+ communication graphs: each client pairs with k neighbours instead of all n - 1.

Bell et al. (CCS 2020) replace the complete graph of Bonawitz et al. by a random graph of
degree k = O(log n); masks, key agreements and Shamir shares then cost O(k) per client. We
use their construction: a Harary graph H(n, k) (each node joined to its k/2 nearest nodes on
each side of a ring, plus the opposite node when k is odd) whose nodes are placed on the ring
in a uniformly random order. It is exactly k-regular and has no structure the server chose.
"""

from __future__ import annotations

import math

import numpy as np

from secure_agg.errors import SecAggError
from secure_agg.randomness import RandomSource


def default_degree(num_clients: int) -> int:
    """k about log2(n), rounded up to an even number and capped at n - 1."""
    if num_clients < 2:
        raise SecAggError(f"num_clients must be at least 2, got {num_clients}")
    k = 2 * math.ceil(math.log2(num_clients) / 2)
    return min(max(k, 2), num_clients - 1)


def complete_graph(ids: list[int]) -> dict[int, tuple[int, ...]]:
    """Every client neighbours every other (the original protocol)."""
    ordered = sorted(ids)
    return {u: tuple(v for v in ordered if v != u) for u in ordered}


def random_harary_graph(ids: list[int], degree: int, rng: RandomSource) -> dict[int, tuple[int, ...]]:
    """A k-regular Harary graph on ``ids`` with the nodes in a random ring order.

    Args:
        ids: The client ids (distinct).
        degree: k, with 1 <= k <= n - 1 and n * k even (otherwise no k-regular graph exists).
        rng: Chooses the ring order.

    Returns:
        Each id mapped to its sorted neighbours.
    """
    n = len(ids)
    if len(set(ids)) != n:
        raise SecAggError("client ids must be distinct")
    if not 1 <= degree <= n - 1:
        raise SecAggError(f"neighbours (the graph degree k) must be between 1 and n - 1 = {n - 1}, got {degree}")
    if (n * degree) % 2:
        raise SecAggError(f"no {degree}-regular graph on {n} clients exists (n * k must be even); choose an even k")
    order = np.random.default_rng(int.from_bytes(rng.bytes(16), "little")).permutation(sorted(ids))
    position = np.arange(n)
    offsets = list(range(1, degree // 2 + 1))
    neighbours: dict[int, set[int]] = {int(u): set() for u in order}
    for off in offsets:
        for a, b in zip(order[position], order[(position + off) % n], strict=True):
            neighbours[int(a)].add(int(b))
            neighbours[int(b)].add(int(a))
    if degree % 2:
        half = n // 2
        for i in range(half):
            a, b = int(order[i]), int(order[i + half])
            neighbours[a].add(b)
            neighbours[b].add(a)
    return {u: tuple(sorted(vs)) for u, vs in neighbours.items()}
