"""Reynolds' boids (1987) with the weights and defaults of Mesa's ``boid_flockers`` example.

Each boid sums over the neighbours within ``vision`` (itself excluded): cohesion
(``cohere`` x the sum of displacements to them), separation (``-separate`` x the sum of
displacements to those closer than ``separation``) and alignment (``match`` x the sum of their
headings); the total divided by the number of neighbours is added to its heading, which is
renormalized, and it moves ``speed`` along it. A boid with no neighbour keeps its heading.
This is Mesa's ``Boid.step`` arithmetic; the one difference is that all boids update
synchronously from the state at time t, where Mesa updates them one at a time in random order.
"""

from __future__ import annotations

import numpy as np

from swarm.perception import Motion, ZoneSums
from swarm.rule import LocalView, check_range, normalize


class Reynolds:
    """Separation, alignment and cohesion: a policy over :class:`swarm.perception.ZoneSums`.

    Args:
        speed: Distance moved per step. Default 1 (Mesa's default).
        vision: Radius within which a boid sees neighbours. Default 10.
        separation: Distance below which a neighbour repels. Default 2.
        cohere: Weight of cohesion. Default 0.03.
        separate: Weight of separation. Default 0.015.
        match: Weight of alignment. Default 0.05.
    """

    name = "reynolds"
    default_density = 0.01  # Mesa's example: 100 boids in a 100 x 100 box

    def __init__(self, speed: float = 1.0, vision: float = 10.0, separation: float = 2.0,
                 cohere: float = 0.03, separate: float = 0.015, match: float = 0.05) -> None:
        self.speed = check_range("speed", speed, 0)
        self.vision = check_range("vision", vision, 0, lo_open=True)
        self.separation = check_range("separation", separation, 0, self.vision)
        self.cohere = check_range("cohere", cohere, 0)
        self.separate = check_range("separate", separate, 0)
        self.match = check_range("match", match, 0)
        # It reads the neighbours within vision and, among them, those closer than separation.
        self.perception = ZoneSums(self.separation, self.separation, self.vision)
        self.motion = Motion(self.speed)

    def __call__(self, view: LocalView) -> np.ndarray:
        """New unit headings from the neighbour sums."""
        # With no neighbour every sum is 0, so dividing by max(n, 1) leaves the heading as is.
        # Component by component: each sum is a contiguous column, no (N, 2) temporaries.
        inv_n = 1.0 / np.maximum(view.column("n_all"), 1.0)
        out = np.empty_like(view.directions)
        for k, axis in enumerate("xy"):
            steer = self.cohere * view.column(f"d{axis}_all")
            steer -= self.separate * view.column(f"d{axis}_near")
            steer += self.match * view.column(f"u{axis}_all")
            steer *= inv_n
            steer += view.directions[:, k]
            out[:, k] = steer
        return normalize(out, view.directions)
