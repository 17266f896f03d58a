"""Order metrics on hand-built configurations with known values."""

import math

import numpy as np
import pytest

from swarm.metrics import (
    clusters,
    nearest_neighbour,
    order_metrics,
    periodic_centre,
    polarization,
    rotation,
)


def test_all_aligned_has_polarization_one():
    headings = np.full(50, 0.7)
    assert polarization(headings) == pytest.approx(1.0, abs=1e-15)
    assert polarization(np.stack([np.cos(headings), np.sin(headings)], 1)) == pytest.approx(1.0, abs=1e-15)


def test_opposite_pairs_have_polarization_zero():
    assert polarization(np.array([0.0, math.pi, 0.5 * math.pi, -0.5 * math.pi])) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("sense", [1, -1])
def test_ring_of_tangential_headings_has_rotation_one(sense):
    box, n = 50.0, 64
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pos = np.array([10.0, 40.0]) + 5.0 * np.stack([np.cos(phi), np.sin(phi)], 1)  # off-centre in the box
    headings = phi + sense * np.pi / 2
    assert rotation(pos, headings, box) == pytest.approx(1.0, abs=1e-12)
    assert polarization(headings) == pytest.approx(0.0, abs=1e-12)


def test_ring_across_the_periodic_boundary_still_has_rotation_one():
    box, n = 20.0, 36
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pos = np.mod(np.array([0.5, 19.5]) + 3.0 * np.stack([np.cos(phi), np.sin(phi)], 1), box)
    assert periodic_centre(pos, box) == pytest.approx([0.5, 19.5], abs=1e-9)
    assert rotation(pos, phi + np.pi / 2, box) == pytest.approx(1.0, abs=1e-9)


def test_radial_headings_have_rotation_zero():
    phi = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    pos = 25 + 4 * np.stack([np.cos(phi), np.sin(phi)], 1)
    assert rotation(pos, phi, 50.0) == pytest.approx(0.0, abs=1e-12)


def test_nearest_neighbour_of_a_square_lattice_is_its_spacing():
    g = np.arange(10) * 2.5
    pos = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    assert nearest_neighbour(pos, 25.0) == pytest.approx(2.5, abs=1e-12)


def test_nearest_neighbour_uses_the_minimum_image():
    pos = np.array([[0.1, 5.0], [9.9, 5.0], [5.0, 5.0]])
    # Agents 0 and 1 are 0.2 apart across the boundary; agent 2 is 4.9 from both.
    assert nearest_neighbour(pos, 10.0) == pytest.approx((0.2 + 0.2 + 4.9) / 3, abs=1e-12)


def test_clusters_counts_connected_groups_including_across_the_boundary():
    box = 100.0
    a = np.array([[0.3, 50.0], [99.5, 50.0], [98.6, 50.0]])  # one chain across x = 0 (gaps 0.8, 0.9)
    b = np.array([[50.0, 50.0], [50.9, 50.0]])
    c = np.array([[20.0, 80.0]])
    pos = np.concatenate([a, b, c])
    assert clusters(pos, 1.0, box) == 3
    assert clusters(pos, 0.5, box) == 6  # every gap (0.8, 0.9, 0.9) is now too wide


def test_random_headings_polarization_is_near_sqrt_pi_over_4n():
    n, trials = 400, 400
    rng = np.random.default_rng(7)
    values = [polarization(rng.uniform(-np.pi, np.pi, n)) for _ in range(trials)]
    # E|mean of N unit vectors| -> sqrt(pi / (4N)) (Rayleigh); the sample mean of 400 trials
    # has a standard error of about 0.5 / sqrt(4N * 400) ~ 0.0006.
    assert np.mean(values) == pytest.approx(math.sqrt(math.pi / (4 * n)), abs=0.003)


def test_order_metrics_rejects_unknown_names():
    with pytest.raises(ValueError, match="metric must be one of"):
        order_metrics(np.zeros((2, 2)), np.zeros(2), 1.0, 0.1, which=("speed",))
