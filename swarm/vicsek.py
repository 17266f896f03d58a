"""The Vicsek model (Vicsek, Czirok, Ben-Jacob, Cohen and Shochet, PRL 75, 1226, 1995).

Each particle moves at constant speed ``v0`` (eq. 1: x(t+1) = x(t) + v(t), time step 1), then
takes as heading the direction of the mean of the unit headings of all particles within
``r`` -- itself included -- plus a noise drawn uniformly from [-eta/2, eta/2] (eq. 2). The
paper's units: r = 1, v0 = 0.03, density rho = N / L^2.
"""

from __future__ import annotations

import math

import numpy as np

from swarm.perception import Motion, ZoneSums
from swarm.rule import LocalView, check_range, unit


class Vicsek:
    """Align with the neighbours within ``radius``, plus uniform angular noise (a policy over ZoneSums).

    Args:
        noise: Noise amplitude eta in [0, 2 pi]. Default 0.5.
        speed: Speed v0 (distance per step). Default 0.03.
        radius: Interaction radius r. Default 1.
        seed: Seed of the rule's own noise generator. Default None.
    """

    name = "vicsek"
    default_density = 4.0

    def __init__(self, noise: float = 0.5, speed: float = 0.03, radius: float = 1.0,
                 seed: int | np.random.SeedSequence | None = None) -> None:
        self.noise = check_range("noise", noise, 0, 2 * math.pi)
        self.speed = check_range("speed", speed, 0)
        self.radius = check_range("radius", radius, 0, lo_open=True)
        self.rng = np.random.default_rng(seed)
        self.perception = ZoneSums(0.0, 0.0, self.radius)
        # Eq. 1: the move uses the velocity at time t, before the turn.
        self.motion = Motion(self.speed, move_first=True)

    def __call__(self, view: LocalView) -> np.ndarray:
        """New unit headings: the mean neighbour direction, self included, plus noise."""
        total = view.directions + view.column("u_all")
        angle = np.arctan2(total[:, 1], total[:, 0])
        # The rule owns its generator, so the same seed gives the same noise sequence.
        angle += self.rng.uniform(-0.5 * self.noise, 0.5 * self.noise, size=len(angle))
        return unit(angle)
