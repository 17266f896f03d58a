"""Swarm emergence on Mesa: Reynolds, Vicsek and Couzin rules, order metrics, the flock env.

``swarm.simulate("vicsek", 400, 1000, seed=0, density=4.0, noise=0.5)`` runs a swarm and
returns per-step order metrics and the final state; :class:`SwarmModel` is the same swarm as a
Mesa model; ``envs.make("swarm/flock-v0")`` is the swarm as a PettingZoo environment.
"""

from swarm.couzin import Couzin
from swarm.engine import SimulationResult, advance, initial_state, simulate
from swarm.metrics import (
    METRICS,
    clusters,
    nearest_neighbour,
    order_metrics,
    polarization,
    rotation,
)
from swarm.neighbours import (
    k_nearest,
    minimum_image,
    neighbour_pairs,
    neighbour_pairs_bruteforce,
    neighbour_sums,
    neighbour_sums_bruteforce,
    wrap,
)
from swarm.reynolds import Reynolds
from swarm.rule import RULES, LocalView, Rule, make_rule
from swarm.vicsek import Vicsek


def __getattr__(name: str) -> object:
    # The Mesa model and the env pull in Mesa and PettingZoo; load them only when asked for.
    if name in ("SwarmModel", "SwarmAgent"):
        from swarm import model

        return getattr(model, name)
    if name in ("FlockEnv", "AlignPolicy"):
        from swarm import env

        return getattr(env, name)
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")


__all__ = [
    "METRICS",
    "RULES",
    "AlignPolicy",
    "Couzin",
    "FlockEnv",
    "LocalView",
    "Reynolds",
    "Rule",
    "SimulationResult",
    "SwarmAgent",
    "SwarmModel",
    "Vicsek",
    "advance",
    "clusters",
    "initial_state",
    "k_nearest",
    "make_rule",
    "minimum_image",
    "nearest_neighbour",
    "neighbour_pairs",
    "neighbour_pairs_bruteforce",
    "neighbour_sums",
    "neighbour_sums_bruteforce",
    "order_metrics",
    "polarization",
    "rotation",
    "simulate",
    "wrap",
]
