"""The swarm as a Mesa model: agents in Mesa's continuous space, one vectorized step for all.

Positions live where Mesa keeps them, in ``ContinuousSpace.agent_positions`` (one numpy row
per agent), and headings in one array beside them, so ``agent.position`` and Mesa's
visualization see the live state while :meth:`SwarmModel.step` updates every agent at once
with :func:`swarm.engine.advance` -- the same function :func:`swarm.simulate` uses. Any policy
drives it: a hand-written rule, a plain function, or a policy learned on ``swarm/flock-v0``
(with the perception and motion it acts through), at any number of agents.
"""

from __future__ import annotations

from typing import Any

import mesa
import numpy as np
from mesa.experimental.continuous_space import ContinuousSpace, ContinuousSpaceAgent

from swarm.engine import advance, box_side, initial_state, named_rule, parts_of
from swarm.metrics import nearest_neighbour, polarization, rotation
from swarm.neighbours import wrap
from swarm.perception import Motion, Perception
from swarm.rule import check_range


class SwarmAgent(ContinuousSpaceAgent):
    """One agent: its position is its row of the space's array, its heading a row of the model's."""

    def __init__(self, model: SwarmModel, space: ContinuousSpace) -> None:
        super().__init__(space, model)
        self.index = len(space.active_agents) - 1

    @property
    def direction(self) -> np.ndarray:
        """Unit heading vector."""
        return self.model.directions[self.index]

    @property
    def angle(self) -> float:
        """Heading in degrees, counter-clockwise from +x."""
        d = self.model.directions[self.index]
        return float(np.degrees(np.arctan2(d[1], d[0])))


class SwarmModel(mesa.Model):
    """A swarm following one policy in a periodic square box.

    Args:
        rule: ``"reynolds"``, ``"vicsek"`` or ``"couzin"``, or any policy (a callable from a
            batch of observations to a batch of actions), or an ``envs.Agent`` holding one.
            Default "reynolds".
        n_agents: Number of agents. Default 100.
        perception: What the agents see (:class:`swarm.ZoneSums`, :class:`swarm.KNearest`).
            Default: the rule's own; needed for a policy without one.
        motion: What an action does (:class:`swarm.Motion`). Default: the rule's own.
        density: Agents per unit area; sets the box when ``box`` is not given. Default: the rule's.
        box: Side of the box. Default None.
        aligned: Start with all headings along +x. Default False.
        init_radius: Start in a disc of this radius at the centre. Default None (whole box).
        seed: Seed of ``model.rng``, which draws the start and seeds the rule's noise. Default None.
        **params: The rule's parameters.
    """

    def __init__(self, rule: Any = "reynolds", n_agents: int = 100, *,
                 perception: Perception | None = None, motion: Motion | None = None,
                 density: float | None = None, box: float | None = None, aligned: bool = False,
                 init_radius: float | None = None, seed: int | None = None, **params: Any) -> None:
        super().__init__(seed=seed)
        n_agents = int(check_range("n_agents", n_agents, 1, integer=True))
        # Drawn whatever the rule, so a named rule's noise seed does not depend on checks below.
        noise_seed = int(self.rng.integers(2**63)) if isinstance(rule, str) and rule != "reynolds" else None
        self.policy = named_rule(rule, params, noise_seed)
        self.perception, self.motion = parts_of(self.policy, perception, motion)
        self.box = box_side(n_agents, density, box, getattr(self.policy, "default_density", 1.0))
        self.space = ContinuousSpace([[0.0, self.box], [0.0, self.box]], torus=True,
                                     random=self.random, n_agents=n_agents)
        SwarmAgent.create_agents(self, n_agents, self.space)
        positions, self.directions = initial_state(n_agents, self.box, self.rng, aligned=aligned,
                                                   init_radius=init_radius)
        self.space.agent_positions[:] = positions
        self.datacollector = mesa.DataCollector(model_reporters={
            "polarization": lambda m: m.polarization,
            "rotation": lambda m: m.rotation,
        })
        self.datacollector.collect(self)

    @property
    def positions(self) -> np.ndarray:
        """(N, 2) view of the positions in Mesa's continuous space."""
        return self.space.agent_positions

    @property
    def polarization(self) -> float:
        """Polarization of the current headings."""
        return polarization(self.directions)

    @property
    def rotation(self) -> float:
        """Rotation (milling) order of the current state."""
        return rotation(self.positions, self.directions, self.box)

    @property
    def nearest_neighbour(self) -> float:
        """Mean nearest-neighbour distance of the current state."""
        return nearest_neighbour(self.positions, self.box)

    def step(self) -> None:
        """Moves every agent at once by the policy, then records the order parameters."""
        positions, self.directions = advance(self.positions, self.directions, self.policy, self.box,
                                             perception=self.perception, motion=self.motion)
        # Written in place: Mesa's agents read their position from this array.
        self.space.agent_positions[:] = wrap(positions, self.box)
        self.datacollector.collect(self)
