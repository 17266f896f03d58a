"""The swarm engine: synchronous vectorized steps of a local rule, with order metrics per step.

One step: neighbour sums from the cell list at time t, the rule's new headings from them,
then every position moves at once (before or after the turn, as the rule says). No loop over
agents in Python; the Mesa model (:mod:`swarm.model`) calls the same :func:`advance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm.metrics import METRICS, order_metrics
from swarm.neighbours import sorted_neighbour_sums, unpermute, wrap
from swarm.rule import RULES, LocalView, Rule, check_range, make_rule, unit


def advance(positions: np.ndarray, directions: np.ndarray, rule: Rule,
            box: float) -> tuple[np.ndarray, np.ndarray]:
    """One synchronous step of every agent; returns new (positions, unit directions).

    The rule sees its batch of agents in cell order (where the neighbour sums are computed);
    only its two-column answer is put back into agent order.
    """
    r_near, r_mid, r_outer = rule.zones
    order, dirs_sorted, sums = sorted_neighbour_sums(positions, directions, box, r_near=r_near,
                                                     r_mid=r_mid, r_outer=r_outer,
                                                     blind_angle=rule.blind_angle)
    new_dirs = unpermute(rule(LocalView(dirs_sorted, sums)), order)
    moved_with = directions if rule.move_first else new_dirs
    return wrap(positions + rule.step_length * moved_with, box), new_dirs


def box_side(n_agents: int, density: float | None, box: float | None, default_density: float) -> float:
    """The box side: ``box`` if given, else sqrt(n_agents / density)."""
    if box is not None:
        return check_range("box", box, 0, lo_open=True)
    d = default_density if density is None else check_range("density", density, 0, lo_open=True)
    return math.sqrt(n_agents / d)


def initial_state(n_agents: int, box: float, rng: np.random.Generator, *,
                  aligned: bool = False, init_radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions in the box (or a disc of ``init_radius`` at its centre), uniform headings.

    With ``aligned`` every heading is 0 (along +x).
    """
    if init_radius is None:
        positions = rng.random((n_agents, 2)) * box
    else:
        # sqrt of a uniform radius gives a uniform density over the disc.
        rad = init_radius * np.sqrt(rng.random(n_agents))
        phi = rng.uniform(0, 2 * np.pi, n_agents)
        positions = wrap(0.5 * box + np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1), box)
    angles = np.zeros(n_agents) if aligned else rng.uniform(-np.pi, np.pi, n_agents)
    return positions, unit(angles)


@dataclass
class SimulationResult:
    """What :func:`simulate` returns.

    Args:
        metrics: Per recorded step, one array per metric (``polarization``, ``rotation``,
            ``nearest_neighbour``, ``clusters``); index 0 is the initial state.
        positions: (N, 2) positions after the last step.
        headings: (N,) heading angles (radians) after the last step.
        box: Side of the periodic box.
        steps: The recorded step numbers.
    """

    metrics: dict[str, np.ndarray]
    positions: np.ndarray
    headings: np.ndarray
    box: float
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    @property
    def directions(self) -> np.ndarray:
        """(N, 2) unit headings after the last step."""
        return unit(self.headings)


def simulate(rule: str | Rule, n_agents: int, steps: int, *, seed: int | None = None,
             density: float | None = None, box: float | None = None, aligned: bool = False,
             init_radius: float | None = None, record: tuple[str, ...] = METRICS,
             record_every: int = 1, **params: Any) -> SimulationResult:
    """Simulates ``n_agents`` following ``rule`` for ``steps`` synchronous steps.

    Args:
        rule: ``"reynolds"``, ``"vicsek"``, ``"couzin"`` or a :class:`swarm.rule.Rule` object.
        n_agents: Number of agents, >= 1 (>= 2 for the nearest-neighbour metric).
        steps: Number of steps, >= 0.
        seed: Seed of the initial state and of the rule's noise. Default None.
        density: Agents per unit area; sets the box when ``box`` is not given. Default: the rule's.
        box: Side of the periodic square box. Default None (from ``density``).
        aligned: Start with every heading along +x. Default False (uniform headings).
        init_radius: Start in a disc of this radius at the box centre. Default None (whole box).
        record: Metrics to record. Default all four.
        record_every: Record every this many steps (and the last). Default 1.
        **params: The rule's parameters (Vicsek: ``noise``, ``speed``, ``radius``; see each rule).

    Returns:
        A :class:`SimulationResult`.

    Raises:
        ValueError: naming the parameter and its allowed range or values.
    """
    n_agents = int(check_range("n_agents", n_agents, 1, integer=True))
    steps = int(check_range("steps", steps, 0, integer=True))
    record_every = int(check_range("record_every", record_every, 1, integer=True))
    for name in record:
        if name not in METRICS:
            raise ValueError(f"record must name metrics among {', '.join(METRICS)}, got {name!r}")
    if init_radius is not None:
        check_range("init_radius", init_radius, 0)
    seeds = np.random.SeedSequence(seed).spawn(2)
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        if rule != "reynolds":
            params.setdefault("seed", seeds[1])
        rule_obj = make_rule(rule, **params)
    else:
        if params:
            raise ValueError(f"rule parameters {sorted(params)} apply only to a rule given by name")
        rule_obj = rule
    side = box_side(n_agents, density, box, getattr(rule_obj, "default_density", 1.0))
    positions, directions = initial_state(n_agents, side, np.random.default_rng(seeds[0]),
                                          aligned=aligned, init_radius=init_radius)
    radius = rule_obj.zones[2]
    series: dict[str, list[float]] = {name: [] for name in record}
    recorded: list[int] = []

    def note(t: int) -> None:
        if record:
            for name, value in order_metrics(positions, directions, side, radius, record).items():
                series[name].append(value)
        recorded.append(t)

    note(0)
    for t in range(1, steps + 1):
        positions, directions = advance(positions, directions, rule_obj, side)
        if t % record_every == 0 or t == steps:
            note(t)
    return SimulationResult(
        metrics={k: np.asarray(v) for k, v in series.items()},
        positions=positions,
        headings=np.arctan2(directions[:, 1], directions[:, 0]),
        box=side,
        steps=np.asarray(recorded),
    )
