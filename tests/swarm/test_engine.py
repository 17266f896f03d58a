"""swarm.simulate: the public entry point, its seeds and its errors."""

import math

import numpy as np
import pytest

import swarm
from swarm.engine import advance, initial_state
from swarm.vicsek import Vicsek


def test_simulate_returns_per_step_metrics_and_the_final_state():
    r = swarm.simulate("vicsek", 100, 20, seed=0, density=4.0, noise=1.0)
    assert set(r.metrics) == {"polarization", "rotation", "nearest_neighbour", "clusters"}
    assert all(len(v) == 21 for v in r.metrics.values())
    assert r.positions.shape == (100, 2) and r.headings.shape == (100,)
    assert r.box == pytest.approx(5.0)  # sqrt(100 / 4)
    assert (r.positions >= 0).all() and (r.positions < r.box).all()
    assert r.metrics["polarization"][-1] == pytest.approx(swarm.polarization(r.headings))


def test_the_same_seed_reproduces_the_trajectory_and_another_does_not():
    a = swarm.simulate("couzin", 50, 30, seed=5, box=60.0, init_radius=5.0)
    b = swarm.simulate("couzin", 50, 30, seed=5, box=60.0, init_radius=5.0)
    c = swarm.simulate("couzin", 50, 30, seed=6, box=60.0, init_radius=5.0)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.headings, b.headings)
    assert not np.array_equal(a.positions, c.positions)


def test_simulate_equals_stepping_advance_by_hand():
    n, steps, seed = 80, 15, 3
    result = swarm.simulate("vicsek", n, steps, seed=seed, density=2.0, noise=0.7, record=())
    s_init, s_rule = np.random.SeedSequence(seed).spawn(2)
    box = math.sqrt(n / 2.0)
    pos, dirs = initial_state(n, box, np.random.default_rng(s_init))
    rule = Vicsek(noise=0.7, seed=s_rule)
    for _ in range(steps):
        pos, dirs = advance(pos, dirs, rule, box)
    np.testing.assert_array_equal(result.positions, pos)


def test_record_every_keeps_the_last_step():
    r = swarm.simulate("reynolds", 30, 10, seed=0, record=("polarization",), record_every=4)
    assert r.steps.tolist() == [0, 4, 8, 10]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(rule="vicsek", n_agents=0, steps=1), r"n_agents must be an integer in \[1, inf\), got 0"),
    (dict(rule="vicsek", n_agents=2.5, steps=1), r"n_agents must be an integer"),
    (dict(rule="vicsek", n_agents=10, steps=-1), r"steps must be an integer in \[0, inf\)"),
    (dict(rule="vicsek", n_agents=10, steps=1, box=-1.0), r"box must be a number in \(0, inf\)"),
    (dict(rule="vicsek", n_agents=10, steps=1, density=0.0), r"density must be a number in \(0, inf\)"),
    (dict(rule="vicsek", n_agents=10, steps=1, noise=6.5), r"noise must be a number in \[0, 6.28319\]"),
    (dict(rule="vicsek", n_agents=10, steps=1, radius=-0.5), r"radius must be a number in \(0, inf\)"),
    (dict(rule="vicsek", n_agents=10, steps=1, speed=-0.5), r"speed must be a number in \[0, inf\)"),
    (dict(rule="flock", n_agents=10, steps=1), r"rule must be one of reynolds, vicsek, couzin"),
    (dict(rule="vicsek", n_agents=10, steps=1, record=("speed",)), r"record must name metrics among"),
])
def test_bad_input_raises_value_error_naming_parameter_and_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        swarm.simulate(**kwargs)


def test_a_rule_object_is_a_policy_and_can_replace_the_named_rule():
    from envs.api import Policy

    rule = Vicsek(noise=0.0, seed=1)
    assert isinstance(rule, Policy)
    r = swarm.simulate(rule, 50, 5, seed=1, aligned=True, density=1.0)
    np.testing.assert_allclose(r.metrics["polarization"], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="apply only to a rule given by name"):
        swarm.simulate(rule, 50, 5, noise=0.1)
