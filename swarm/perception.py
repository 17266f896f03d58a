"""What an agent sees and how it moves: perceptions, and the motion that carries out an action.

A swarm step has three parts (:func:`swarm.engine.advance`):

1. a **perception** turns the swarm's state into a batch of observations, one row per agent;
2. a **policy** (:class:`envs.api.Policy`: any callable, a plain function included) turns the
   batch of observations into a batch of actions;
3. the **motion** turns each action into a new heading and moves every agent.

Two perceptions:

* :class:`ZoneSums` -- sums over the neighbours in three distance zones, minus a blind angle
  (a :class:`swarm.rule.LocalView`): what Reynolds, Vicsek and Couzin read.
* :class:`KNearest` -- the ``k`` nearest neighbours in the agent's own frame: the observation
  of ``swarm/flock-v0``, so a policy trained there reads the same thing in any swarm.

A perception may hand its batch over in another order of agents than the swarm's (ZoneSums
works in cell order, where its sums are computed); :class:`Percept` says which agent each row
is, and the motion puts the actions back in agent order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from swarm.neighbours import k_nearest, minimum_image, sorted_neighbour_sums, unpermute, wrap
from swarm.rule import LocalView, check_range, unit


@dataclass(frozen=True)
class Percept:
    """A batch of observations and the agents they belong to.

    Args:
        observations: One row per agent (an array, or a batch object such as a LocalView).
        directions: (N, 2) unit headings of the agents, in the rows' order.
        order: ``order[k]`` is the agent of row k; None when the rows are in agent order.
    """

    observations: Any
    directions: np.ndarray
    order: np.ndarray | None = None


class Perception(Protocol):
    """What an agent sees: the swarm's state in, a :class:`Percept` out.

    ``radius`` is how far it reaches (the cluster metric links agents within it).
    """

    radius: float

    def __call__(self, positions: np.ndarray, directions: np.ndarray, box: float) -> Percept: ...


@dataclass(frozen=True)
class ZoneSums:
    """Sums over the neighbours in three zones (``swarm.neighbours.SUM_COLUMNS``), as a LocalView.

    Args:
        r_near: Outer radius of the near zone (exclusive).
        r_mid: Outer radius of the middle zone (exclusive).
        r_outer: Interaction radius (inclusive).
        blind_angle: Width of the blind region behind each agent, radians in [0, 2 pi). Default 0.
    """

    r_near: float
    r_mid: float
    r_outer: float
    blind_angle: float = 0.0

    def __post_init__(self) -> None:
        check_range("blind_angle", self.blind_angle, 0, 2 * math.pi, hi_open=True)
        if not (0 <= self.r_near <= self.r_mid <= self.r_outer):
            raise ValueError("zone radii must satisfy 0 <= r_near <= r_mid <= r_outer, got "
                             f"{self.r_near}, {self.r_mid}, {self.r_outer}")

    @property
    def radius(self) -> float:
        return self.r_outer

    def __call__(self, positions: np.ndarray, directions: np.ndarray, box: float) -> Percept:
        """The views in cell order (the kernel's order: the policy reads contiguous columns)."""
        order, dirs_sorted, sums = sorted_neighbour_sums(
            positions, directions, box, r_near=self.r_near, r_mid=self.r_mid, r_outer=self.r_outer,
            blind_angle=self.blind_angle)
        return Percept(LocalView(dirs_sorted, sums), dirs_sorted, order)

    def view(self, positions: np.ndarray, directions: np.ndarray, box: float) -> LocalView:
        """The views in agent order (row i is agent i)."""
        p = self(positions, directions, box)
        return LocalView(np.asarray(directions, dtype=np.float64), unpermute(p.observations.sums, p.order))


class Neighbours(NamedTuple):
    """The k nearest neighbours of every agent, in float64 (what :class:`KNearest` encodes)."""

    distances: np.ndarray  # (N, k)
    indices: np.ndarray  # (N, k)
    local: np.ndarray  # (N, k, 2) displacements rotated into each agent's frame (heading = +x)
    cos: np.ndarray  # (N, k) cosine of each neighbour's heading relative to the agent's
    sin: np.ndarray  # (N, k) sine of it


@dataclass(frozen=True)
class KNearest:
    """The ``k`` nearest neighbours (periodic) in the agent's own frame: ``swarm/flock-v0``'s observation.

    Row i is ``4k`` float32 numbers: the displacements to its neighbours, nearest first, rotated
    so that its heading points along +x and divided by ``scale`` (clipped to [-1, 1]), then the
    cosines and the sines of their headings relative to its own.

    Args:
        k: Neighbours seen, >= 1.
        scale: Length unit of the displacements (flock-v0: half its box), > 0.
    """

    k: int
    scale: float

    def __post_init__(self) -> None:
        check_range("k", self.k, 1, integer=True)
        check_range("scale", self.scale, 0, lo_open=True)

    @property
    def radius(self) -> float:
        return self.scale

    @property
    def obs_dim(self) -> int:
        return 4 * self.k

    def neighbours(self, positions: np.ndarray, directions: np.ndarray, box: float) -> Neighbours:
        """Who the neighbours are and where, in each agent's frame (float64)."""
        dist, idx = k_nearest(positions, self.k, box)
        pos = np.asarray(positions, dtype=np.float64)
        d = minimum_image(pos[idx] - pos[:, None, :], box)
        u = np.asarray(directions, dtype=np.float64)
        c, s = u[:, 0:1], u[:, 1:2]
        # Rotate by minus the agent's heading: its heading becomes +x.
        local = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)
        uj = u[idx]
        cos = c * uj[..., 0] + s * uj[..., 1]  # cos(theta_j - theta_i)
        sin = c * uj[..., 1] - s * uj[..., 0]  # sin(theta_j - theta_i)
        return Neighbours(dist, idx, local, cos, sin)

    def encode(self, nb: Neighbours) -> np.ndarray:
        """The (N, 4k) float32 observations of :meth:`neighbours`' result."""
        n = nb.local.shape[0]
        # Minimum-image components are at most box/2 each, so a scaled vector can reach
        # sqrt(2) in length after rotation; the clip keeps the observation inside [-1, 1].
        pos_part = np.clip(nb.local / self.scale, -1.0, 1.0).reshape(n, -1)
        return np.concatenate([pos_part, nb.cos, nb.sin], axis=1).astype(np.float32)

    def __call__(self, positions: np.ndarray, directions: np.ndarray, box: float) -> Percept:
        return Percept(self.encode(self.neighbours(positions, directions, box)),
                       np.asarray(directions, dtype=np.float64))


@dataclass(frozen=True)
class Motion:
    """How an action moves an agent: the new heading it means, and the step along it.

    Args:
        speed: Distance moved per step, >= 0.
        move_first: Move with the old heading, then turn (Vicsek 1995, eq. 1); default False:
            turn first and move with the new heading (Reynolds, Couzin, flock-v0).
        turns: None (default): an action is the new unit heading, (N, 2). Else the turns, in
            radians, an action indexes: the heading turns by ``turns[action]`` (flock-v0).
    """

    speed: float
    move_first: bool = False
    turns: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_range("speed", self.speed, 0)
        if self.turns is not None:
            if len(self.turns) == 0:
                raise ValueError("turns must hold at least one turn (radians), got an empty list")
            for t in self.turns:
                check_range("turns", t, -math.pi, math.pi)

    def headings(self, percept: Percept, actions: Any) -> np.ndarray:
        """The new (N, 2) unit headings, in agent order, from a batch of actions in the percept's order."""
        if self.turns is None:
            new = np.asarray(actions, dtype=np.float64)
            if new.shape != percept.directions.shape:
                raise ValueError(f"a heading policy must return one (x, y) heading per agent, shape "
                                 f"{percept.directions.shape}, got shape {new.shape}")
        else:
            index = np.asarray(actions).reshape(-1)
            if index.shape[0] != percept.directions.shape[0]:
                raise ValueError(f"a turning policy must return one turn index per agent ({percept.directions.shape[0]}), "
                                 f"got {index.shape[0]}")
            if index.size and (index.min() < 0 or index.max() >= len(self.turns)):
                raise ValueError(f"turn indices must lie in [0, {len(self.turns) - 1}], got {index.min()}..{index.max()}")
            d = percept.directions
            angle = np.arctan2(d[:, 1], d[:, 0]) + np.asarray(self.turns)[index.astype(np.int64)]
            new = unit(angle)
        return new if percept.order is None else unpermute(new, percept.order)

    def move(self, positions: np.ndarray, directions: np.ndarray, new_directions: np.ndarray,
             box: float) -> np.ndarray:
        """Positions after one step (the old or the new heading, as ``move_first`` says), wrapped."""
        along = directions if self.move_first else new_directions
        return wrap(positions + self.speed * along, box)
