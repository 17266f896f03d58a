"""Order parameters of a swarm, vectorized over agents, in a periodic square box.

* polarization: |mean unit heading|, 1 when all agents head the same way, about
  sqrt(pi / (4 N)) for independent uniform headings.
* rotation (milling): |mean of r_hat_i x u_i| about the group centre, 1 for a ring of agents
  all heading tangentially the same way round (Couzin et al. 2002).
* nearest_neighbour: mean distance from each agent to its nearest other agent.
* clusters: number of connected components of the graph linking agents within ``radius``.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from swarm.neighbours import minimum_image, neighbour_pairs, wrap

METRICS = ("polarization", "rotation", "nearest_neighbour", "clusters")


def _unit(headings: np.ndarray) -> np.ndarray:
    h = np.asarray(headings, dtype=np.float64)
    return np.stack([np.cos(h), np.sin(h)], axis=1) if h.ndim == 1 else h


def polarization(headings: np.ndarray) -> float:
    """|mean of unit headings|; ``headings`` are (N,) angles or (N, 2) unit vectors."""
    u = _unit(headings)
    return float(np.hypot(*u.mean(axis=0)))


def periodic_centre(positions: np.ndarray, box: float) -> np.ndarray:
    """The centre of a compact group on a torus: the circular mean of each coordinate."""
    theta = 2 * np.pi * np.asarray(positions, dtype=np.float64) / box
    mean = np.arctan2(np.sin(theta).mean(axis=0), np.cos(theta).mean(axis=0))
    return np.mod(mean, 2 * np.pi) * box / (2 * np.pi)


def rotation(positions: np.ndarray, headings: np.ndarray, box: float) -> float:
    """|mean over agents of (unit vector from the centre to i) x (heading of i)|."""
    u = _unit(headings)
    r = minimum_image(np.asarray(positions, dtype=np.float64) - periodic_centre(positions, box), box)
    norm = np.hypot(r[:, 0], r[:, 1])
    safe = np.where(norm > 0, norm, 1.0)
    cross = (r[:, 0] * u[:, 1] - r[:, 1] * u[:, 0]) / safe
    return float(abs(np.where(norm > 0, cross, 0.0).mean()))


def nearest_neighbour(positions: np.ndarray, box: float) -> float:
    """Mean distance to the nearest other agent (periodic KD-tree)."""
    pos = wrap(np.asarray(positions, dtype=np.float64), box)
    if len(pos) < 2:
        return float("nan")
    dist, _ = cKDTree(pos, boxsize=box).query(pos, k=2)
    return float(dist[:, 1].mean())


def clusters(positions: np.ndarray, radius: float, box: float) -> int:
    """Connected components of the graph with an edge between agents within ``radius``."""
    n = len(positions)
    pairs = neighbour_pairs(positions, radius, box)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, _ = connected_components(graph, directed=False)
    return int(count)


def order_metrics(positions: np.ndarray, headings: np.ndarray, box: float, radius: float,
                  which: tuple[str, ...] = METRICS) -> dict[str, float]:
    """The metrics named in ``which`` for one snapshot."""
    out: dict[str, float] = {}
    for name in which:
        if name == "polarization":
            out[name] = polarization(headings)
        elif name == "rotation":
            out[name] = rotation(positions, headings, box)
        elif name == "nearest_neighbour":
            out[name] = nearest_neighbour(positions, box)
        elif name == "clusters":
            out[name] = clusters(positions, radius, box)
        else:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {name!r}")
    return out
