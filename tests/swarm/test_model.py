"""The Mesa model: real Mesa agents in Mesa's continuous space, stepped by the shared engine."""

import mesa
import numpy as np
from mesa.experimental.continuous_space import ContinuousSpace

from swarm.engine import advance
from swarm.model import SwarmAgent, SwarmModel
from swarm.reynolds import Reynolds


def test_model_is_a_mesa_model_with_agents_in_continuous_space():
    m = SwarmModel("reynolds", 50, box=30.0, seed=1)
    assert isinstance(m, mesa.Model) and isinstance(m.space, ContinuousSpace) and m.space.torus
    agents = list(m.agents)
    assert len(agents) == 50 and all(isinstance(a, SwarmAgent) for a in agents)
    np.testing.assert_array_equal(np.array([a.position for a in agents]), m.positions)


def test_step_equals_the_engine_and_agents_see_the_new_positions():
    m = SwarmModel("reynolds", 80, box=30.0, seed=2)
    pos, dirs = m.positions.copy(), m.directions.copy()
    m.step()
    ref_pos, ref_dirs = advance(pos, dirs, Reynolds(), 30.0)
    np.testing.assert_array_equal(m.positions, ref_pos)
    np.testing.assert_array_equal(m.directions, ref_dirs)
    a = list(m.agents)[7]
    np.testing.assert_array_equal(a.position, ref_pos[7])
    assert a.angle == np.degrees(np.arctan2(ref_dirs[7, 1], ref_dirs[7, 0]))


def test_model_rng_seed_reproduces_and_datacollector_records_polarization():
    runs = []
    for _ in range(2):
        m = SwarmModel("vicsek", 60, density=3.0, seed=9, noise=0.4)
        for _ in range(10):
            m.step()
        runs.append(m)
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)
    frame = runs[0].datacollector.get_model_vars_dataframe()
    assert len(frame) == 11
    assert frame["polarization"].iloc[-1] == runs[0].polarization
