"""The local rules against references: Mesa's own Boid.step, Vicsek 1995, Couzin 2002 by hand."""

import math

import numpy as np
import pytest

from swarm.couzin import Couzin
from swarm.engine import advance, simulate
from swarm.neighbours import neighbour_sums, wrap
from swarm.reynolds import Reynolds
from swarm.rule import LocalView, make_rule


def _view(pos, dirs, box, rule):
    z = rule.perception
    return LocalView(dirs, neighbour_sums(pos, dirs, box, r_near=z.r_near, r_mid=z.r_mid, r_outer=z.r_outer,
                                          blind_angle=z.blind_angle))


def test_reynolds_equals_mesa_boid_step_agent_by_agent():
    from mesa.examples.basic.boid_flockers.model import BoidFlockers

    box = 40.0
    model = BoidFlockers(population_size=60, width=box, height=box, seed=3)
    boids = list(model.agents)
    rng = np.random.default_rng(0)
    for b in boids:  # ours keeps unit headings; give Mesa's boids unit headings too
        a = rng.uniform(-np.pi, np.pi)
        b.direction = np.array([np.cos(a), np.sin(a)])
    pos = np.array([b.position for b in boids])
    dirs = np.array([b.direction for b in boids])
    rule = Reynolds()  # Mesa's defaults: speed 1, vision 10, separation 2, weights .03/.015/.05
    new_dirs = rule(_view(pos, dirs, box, rule))
    new_pos = wrap(pos + rule.speed * new_dirs, box)
    for k, b in enumerate(boids):
        b.step()  # Mesa's own arithmetic for this one boid, from the same state
        np.testing.assert_allclose(b.direction, new_dirs[k], atol=1e-12)
        np.testing.assert_allclose(b.position, new_pos[k], atol=1e-12)
        b.position, b.direction = pos[k].copy(), dirs[k].copy()


def test_vicsek_without_noise_from_an_aligned_start_stays_aligned():
    result = simulate("vicsek", 300, 200, seed=1, density=2.0, aligned=True, noise=0.0)
    np.testing.assert_allclose(result.metrics["polarization"], 1.0, atol=1e-12)
    np.testing.assert_allclose(result.headings, 0.0, atol=1e-12)


def test_vicsek_at_full_noise_has_the_random_heading_polarization():
    n = 200
    result = simulate("vicsek", n, 400, seed=2, density=4.0, noise=2 * np.pi, record=("polarization",))
    # At eta = 2 pi every new heading is uniform and independent of the neighbours.
    assert result.metrics["polarization"][1:].mean() == pytest.approx(math.sqrt(math.pi / (4 * n)), rel=0.08)


def test_vicsek_heading_is_the_mean_of_neighbours_including_itself():
    box = 10.0
    pos = np.array([[5.0, 5.0], [5.5, 5.0], [5.0, 5.5], [8.0, 8.0]])
    ang = np.array([0.0, np.pi / 2, np.pi / 2, np.pi])
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
    rule = make_rule("vicsek", noise=0.0, radius=1.0, speed=0.1, seed=0)
    new_pos, new_dirs = advance(pos, dirs, rule, box)
    # Agent 0 sees 1 and 2 (and itself): mean of (1,0), (0,1), (0,1) points at atan2(2, 1).
    got = np.arctan2(new_dirs[:, 1], new_dirs[:, 0])
    assert got[0] == pytest.approx(math.atan2(2, 1), abs=1e-12)
    assert got[3] == pytest.approx(np.pi, abs=1e-12)  # alone: keeps its heading
    # Eq. 1 of the paper: the move uses the velocity at time t.
    np.testing.assert_allclose(new_pos, wrap(pos + 0.1 * dirs, box), atol=1e-12)


def _couzin_turn(neighbour, neighbour_heading=0.0, **kw):
    rule = Couzin(noise=0.0, seed=0, **kw)
    pos = np.array([[10.0, 10.0], [10.0 + neighbour[0], 10.0 + neighbour[1]]])
    ang = np.array([0.0, neighbour_heading])
    dirs = np.stack([np.cos(ang), np.sin(ang)], 1)
    new = rule(_view(pos, dirs, 40.0, rule))
    return math.atan2(new[0, 1], new[0, 0]), rule


def test_couzin_repulsion_turns_away_at_the_maximum_rate():
    angle, rule = _couzin_turn((0.5, 0.5))  # in the zone of repulsion, ahead and to the left
    assert angle == pytest.approx(-rule.turning_rate * rule.dt, abs=1e-12)


def test_couzin_blind_angle_hides_a_neighbour_behind():
    # Behind and to the left, at 158 degrees from the heading: inside the 90-degree blind angle.
    angle, _ = _couzin_turn((-0.5, 0.2))
    assert angle == pytest.approx(0.0, abs=1e-12)
    angle, rule = _couzin_turn((-0.5, 0.2), blind_angle=0.0)  # seen: repelled forward and right
    assert angle == pytest.approx(-rule.turning_rate * rule.dt, abs=1e-12)


def test_couzin_orientation_aligns_and_small_desired_turns_are_taken_whole():
    # A neighbour in the orientation zone heading +y: desired = (1,0) + (0,1), 45 degrees left.
    angle, rule = _couzin_turn((2.0, 0.0), neighbour_heading=np.pi / 2)
    assert angle == pytest.approx(rule.turning_rate * rule.dt, abs=1e-12)
    angle, _ = _couzin_turn((2.0, 0.0), neighbour_heading=np.pi / 2, turning_rate=100.0)
    assert angle == pytest.approx(np.pi / 4, abs=1e-12)


def test_couzin_attraction_turns_towards_a_distant_neighbour():
    angle, _ = _couzin_turn((0.0, 8.0), turning_rate=100.0)  # attraction zone, straight left
    assert angle == pytest.approx(np.pi / 2, abs=1e-12)


@pytest.mark.parametrize(("rule", "params", "match"), [
    ("vicsek", {"noise": 7.0}, r"noise must be a number in \[0, 6.28319\]"),
    ("vicsek", {"noise": -0.1}, r"noise must be a number in \[0, 6.28319\]"),
    ("vicsek", {"radius": -1.0}, r"radius must be a number in \(0, inf\)"),
    ("vicsek", {"speed": -1.0}, r"speed must be a number in \[0, inf\)"),
    ("reynolds", {"vision": 0.0}, r"vision must be a number in \(0, inf\)"),
    ("reynolds", {"separation": 20.0}, r"separation must be a number in \[0, 10\]"),
    ("couzin", {"blind_angle": 7.0}, r"blind_angle must be a number in \[0, 6.28319\)"),
    ("couzin", {"repulsion": -1.0}, r"repulsion must be a number in \(0, inf\)"),
    ("vicsek", {"nosie": 1.0}, r"unknown parameter\(s\) nosie for rule 'vicsek' \(allowed: noise, speed, radius, seed\)"),
    ("boids", {}, r"rule must be one of reynolds, vicsek, couzin, got 'boids'"),
])
def test_bad_rule_parameters_name_the_parameter_and_range(rule, params, match):
    with pytest.raises(ValueError, match=match):
        make_rule(rule, **params)
