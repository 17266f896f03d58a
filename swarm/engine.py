"""The swarm engine: synchronous vectorized steps of perception, policy and motion, with order metrics.

One step (:func:`advance`): the perception builds every agent's observation from the state at
time t, the policy turns the batch of observations into a batch of actions, and the motion
turns them into new headings and moves every agent at once. No loop over agents in Python; the
Mesa model (:mod:`swarm.model`) and ``swarm/flock-v0`` (:mod:`swarm.env`) use the same pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm.metrics import METRICS, order_metrics
from swarm.neighbours import wrap
from swarm.perception import Motion, Perception
from swarm.rule import RULES, check_range, make_rule, unit

if TYPE_CHECKING:
    from envs.api import Policy


def parts_of(policy: Policy, perception: Perception | None = None,
             motion: Motion | None = None) -> tuple[Perception, Motion]:
    """The perception and motion a policy runs with: the ones given, else the policy's own.

    A hand-written rule (Reynolds, Vicsek, Couzin) carries the perception and motion it was
    written for; a plain function or a learned policy is given them.

    Raises:
        ValueError: naming what is missing.
    """
    perception = perception if perception is not None else getattr(policy, "perception", None)
    motion = motion if motion is not None else getattr(policy, "motion", None)
    if not callable(policy):
        raise ValueError(f"policy must be callable (a batch of observations in, a batch of actions out), "
                         f"got {type(policy).__name__}")
    if perception is None:
        raise ValueError("perception: this policy has none of its own; give one "
                         "(swarm.ZoneSums(...) for neighbour sums, swarm.KNearest(...) for flock-v0's view)")
    if motion is None:
        raise ValueError("motion: this policy has none of its own; give one (swarm.Motion(speed=..., turns=...))")
    return perception, motion


def advance(positions: np.ndarray, directions: np.ndarray, policy: Policy, box: float, *,
            perception: Perception | None = None, motion: Motion | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synchronous step of every agent; returns new (positions, unit directions).

    Args:
        positions: (N, 2) positions in [0, box).
        directions: (N, 2) unit headings.
        policy: Any callable from a batch of observations to a batch of actions.
        box: Side of the periodic box.
        perception: What the agents see. Default: the policy's own (a hand-written rule's).
        motion: What an action does. Default: the policy's own.
    """
    perception, motion = parts_of(policy, perception, motion)
    percept = perception(positions, directions, box)
    new_dirs = motion.headings(percept, policy(percept.observations))
    return motion.move(positions, directions, new_dirs, box), new_dirs


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


def named_rule(rule: Any, params: dict[str, Any], seed: Any) -> Policy:
    """A rule given by name, built with its parameters (its noise seeded with ``seed``), or the
    policy given (an ``envs.Agent``'s own policy when given an agent)."""
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        if rule != "reynolds":
            params.setdefault("seed", seed)
        return make_rule(rule, **params)
    if params:
        raise ValueError(f"rule parameters {sorted(params)} apply only to a rule given by name")
    if not callable(rule) and callable(getattr(rule, "policy", None)):
        return rule.policy  # an envs.Agent: the swarm acts through the agent's policy
    return rule


def simulate(rule: str | Policy, n_agents: int, steps: int, *, perception: Perception | None = None,
             motion: Motion | None = None, seed: int | None = None,
             density: float | None = None, box: float | None = None, aligned: bool = False,
             init_radius: float | None = None, record: tuple[str, ...] = METRICS,
             record_every: int = 1, **params: Any) -> SimulationResult:
    """Simulates ``n_agents`` following ``rule`` for ``steps`` synchronous steps.

    Args:
        rule: ``"reynolds"``, ``"vicsek"``, ``"couzin"``, or any policy (a callable from a batch
            of observations to a batch of actions: a rule object, a plain function, a learned policy).
        n_agents: Number of agents, >= 1 (>= 2 for the nearest-neighbour metric).
        steps: Number of steps, >= 0.
        perception: What the agents see (:class:`swarm.ZoneSums`, :class:`swarm.KNearest`).
            Default: the rule's own; needed for a policy without one.
        motion: What an action does (:class:`swarm.Motion`). Default: the rule's own.
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
    policy = named_rule(rule, params, seeds[1])
    perception, motion = parts_of(policy, perception, motion)
    side = box_side(n_agents, density, box, getattr(policy, "default_density", 1.0))
    positions, directions = initial_state(n_agents, side, np.random.default_rng(seeds[0]),
                                          aligned=aligned, init_radius=init_radius)
    radius = perception.radius
    series: dict[str, list[float]] = {name: [] for name in record}
    recorded: list[int] = []

    def note(t: int) -> None:
        if record:
            for name, value in order_metrics(positions, directions, side, radius, record).items():
                series[name].append(value)
        recorded.append(t)

    note(0)
    for t in range(1, steps + 1):
        positions, directions = advance(positions, directions, policy, side, perception=perception, motion=motion)
        if t % record_every == 0 or t == steps:
            note(t)
    return SimulationResult(
        metrics={k: np.asarray(v) for k, v in series.items()},
        positions=positions,
        headings=np.arctan2(directions[:, 1], directions[:, 0]),
        box=side,
        steps=np.asarray(recorded),
    )
