"""Couzin's zones model (Couzin, Krause, James, Ruxton and Franks, J. Theor. Biol. 218, 2002), in 2D.

Around each individual lie three zones: repulsion (r < r_r), orientation (r_r <= r < r_o) and
attraction (r_o <= r <= r_a), minus a blind angle behind it. Repulsion has priority: with any
neighbour in it, the desired direction is away from them, -sum r_ij/|r_ij|. Otherwise the
desired direction is the sum of headings in the orientation zone (the individual's own
included), the sum of unit vectors towards the neighbours in the attraction zone, or the mean
of the two once normalized when both zones hold neighbours; with no neighbour it keeps its
heading. The desired direction is rotated by Gaussian noise (s.d. ``noise``) and the heading
turns towards it by at most ``turning_rate * dt``; it then moves ``speed * dt``.
Defaults are the paper's: r_r = 1, s = 3, turning rate 40 degrees/s, tau = 0.1 s,
sigma = 0.05 rad, field of perception 270 degrees (blind angle 90 degrees).
"""

from __future__ import annotations

import math

import numpy as np

from swarm.perception import Motion, ZoneSums
from swarm.rule import LocalView, check_range, normalize


class Couzin:
    """Repulsion, orientation and attraction zones with a blind angle and a maximum turning rate.

    A policy over :class:`swarm.perception.ZoneSums`; the blind angle lives in that perception.

    Args:
        repulsion: Radius r_r of the zone of repulsion. Default 1.
        orientation_width: Width delta r_o of the zone of orientation. Default 2.
        attraction_width: Width delta r_a of the zone of attraction. Default 12.
        blind_angle: Blind angle behind each individual, radians in [0, 2 pi). Default pi/2.
        turning_rate: Maximum turning rate, radians per unit time. Default 40 degrees.
        speed: Speed, distance per unit time. Default 3.
        dt: Time step tau. Default 0.1.
        noise: Standard deviation of the angular noise, radians. Default 0.05.
        seed: Seed of the rule's own noise generator. Default None.
    """

    name = "couzin"
    default_density = 0.001

    def __init__(self, repulsion: float = 1.0, orientation_width: float = 2.0,
                 attraction_width: float = 12.0, blind_angle: float = math.pi / 2,
                 turning_rate: float = math.radians(40.0), speed: float = 3.0, dt: float = 0.1,
                 noise: float = 0.05, seed: int | np.random.SeedSequence | None = None) -> None:
        self.repulsion = check_range("repulsion", repulsion, 0, lo_open=True)
        self.orientation_width = check_range("orientation_width", orientation_width, 0)
        self.attraction_width = check_range("attraction_width", attraction_width, 0)
        self.blind_angle = check_range("blind_angle", blind_angle, 0, 2 * math.pi, hi_open=True)
        self.turning_rate = check_range("turning_rate", turning_rate, 0, lo_open=True)
        self.speed = check_range("speed", speed, 0)
        self.dt = check_range("dt", dt, 0, lo_open=True)
        self.noise = check_range("noise", noise, 0)
        self.rng = np.random.default_rng(seed)
        r_o = self.repulsion + self.orientation_width
        self.perception = ZoneSums(self.repulsion, r_o, r_o + self.attraction_width, self.blind_angle)
        self.motion = Motion(self.speed * self.dt)

    def __call__(self, view: LocalView) -> np.ndarray:
        """New unit headings: desired direction by zone priority, noise, bounded turn."""
        own = view.directions
        d_o = normalize(own + view.column("u_mid"), own)
        d_a = normalize(view.column("e_far"), own)
        has_o = view.column("n_mid") > 0
        has_a = view.column("n_far") > 0
        desired = own.copy()
        desired[has_o & ~has_a] = d_o[has_o & ~has_a]
        desired[has_a & ~has_o] = d_a[has_a & ~has_o]
        both = has_o & has_a
        desired[both] = 0.5 * (d_o[both] + d_a[both])
        repel = view.column("n_near") > 0
        desired[repel] = -view.column("e_near")[repel]
        desired = normalize(desired, own)

        angle_own = np.arctan2(own[:, 1], own[:, 0])
        angle_desired = np.arctan2(desired[:, 1], desired[:, 0]) + self.rng.normal(0.0, self.noise, len(own))
        # Signed smallest turn from the current heading to the desired one, in (-pi, pi].
        turn = np.angle(np.exp(1j * (angle_desired - angle_own)))
        max_turn = self.turning_rate * self.dt
        new = angle_own + np.clip(turn, -max_turn, max_turn)
        return np.stack([np.cos(new), np.sin(new)], axis=1)
