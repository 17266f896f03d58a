"""Swarm emergence on Mesa: perceptions, policies (Reynolds, Vicsek, Couzin, learned), order metrics.

``swarm.simulate("vicsek", 400, 1000, seed=0, density=4.0, noise=0.5)`` runs a swarm and
returns per-step order metrics and the final state; :class:`SwarmModel` is the same swarm as a
Mesa model; ``envs.make("swarm/flock-v0")`` is the swarm as a PettingZoo environment. A step is
a perception (:class:`ZoneSums`, :class:`KNearest`), a policy (any callable: a rule, a plain
function, :func:`load_learned`'s trained actor) and a :class:`Motion`.
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
from swarm.perception import KNearest, Motion, Percept, Perception, ZoneSums
from swarm.reynolds import Reynolds
from swarm.rule import RULES, LocalView, make_rule
from swarm.vicsek import Vicsek


def __getattr__(name: str) -> object:
    # The Mesa model and the env pull in Mesa and PettingZoo; load them only when asked for.
    if name in ("SwarmModel", "SwarmAgent"):
        from swarm import model

        return getattr(model, name)
    if name in ("FlockEnv", "AlignPolicy"):
        from swarm import env

        return getattr(env, name)
    if name in ("LearnedPolicy", "load_learned"):
        # A saved MAPPO actor pulls in torch.
        from swarm import learned

        return getattr(learned, name)
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")


__all__ = [
    "METRICS",
    "RULES",
    "AlignPolicy",
    "Couzin",
    "FlockEnv",
    "KNearest",
    "LearnedPolicy",
    "LocalView",
    "Motion",
    "Percept",
    "Perception",
    "Reynolds",
    "SimulationResult",
    "SwarmAgent",
    "SwarmModel",
    "Vicsek",
    "ZoneSums",
    "advance",
    "clusters",
    "initial_state",
    "k_nearest",
    "load_learned",
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
