"""The cell list against brute force, periodic boundaries included."""

import numpy as np
import pytest

from swarm.neighbours import (
    COL,
    k_nearest,
    minimum_image,
    neighbour_pairs,
    neighbour_pairs_bruteforce,
    neighbour_sums,
    neighbour_sums_bruteforce,
)


def _swarm(n, box, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-np.pi, np.pi, n)
    return rng.random((n, 2)) * box, np.stack([np.cos(a), np.sin(a)], 1)


@pytest.mark.parametrize(("n", "box", "zones", "blind"), [
    (400, 10.0, (0.5, 1.0, 2.0), 0.0),        # many cells
    (400, 10.0, (0.5, 1.0, 2.0), np.pi / 2),  # Couzin's blind angle
    (300, 7.0, (0.0, 0.0, 3.4), 0.0),         # 2 cells per side: the stencil must not double count
    (50, 3.0, (1.0, 2.0, 5.0), 0.0),          # radius beyond half the box: 1 cell
    (1000, 31.6, (2.0, 2.0, 10.0), 0.0),      # Reynolds' zones at Mesa's density
])
def test_neighbour_sums_equal_brute_force(n, box, zones, blind):
    pos, dirs = _swarm(n, box, seed=n)
    kw = dict(r_near=zones[0], r_mid=zones[1], r_outer=zones[2], blind_angle=blind)
    fast = neighbour_sums(pos, dirs, box, **kw)
    slow = neighbour_sums_bruteforce(pos, dirs, box, **kw)
    assert fast.shape == (n, 16)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    assert slow[:, COL["n_all"]].sum() > 0


def test_neighbours_across_the_corner_are_found():
    box = 10.0
    pos = np.array([[0.05, 0.05], [9.95, 9.95], [5.0, 5.0]])
    dirs = np.tile([1.0, 0.0], (3, 1))
    sums = neighbour_sums(pos, dirs, box, r_near=0.0, r_mid=0.0, r_outer=0.5)
    assert sums[:, COL["n_all"]].tolist() == [1.0, 1.0, 0.0]
    # Agent 0 sees agent 1 at (-0.1, -0.1) through the corner.
    np.testing.assert_allclose(sums[0, [COL["dx_all"], COL["dy_all"]]], [-0.1, -0.1], atol=1e-12)


def test_minimum_image_is_within_half_a_box():
    d = minimum_image(np.array([[9.0, -9.0], [4.9, -5.1]]), 10.0)
    np.testing.assert_allclose(d, [[-1.0, 1.0], [4.9, 4.9]], atol=1e-12)


@pytest.mark.parametrize("radius", [0.3, 1.0, 4.0])
def test_pairs_equal_brute_force(radius):
    pos, _ = _swarm(300, 8.0, seed=3)
    np.testing.assert_array_equal(neighbour_pairs(pos, radius, 8.0), neighbour_pairs_bruteforce(pos, radius, 8.0))


def test_k_nearest_equals_brute_force():
    pos, _ = _swarm(60, 5.0, seed=1)
    dist, idx = k_nearest(pos, 4, 5.0)
    d = minimum_image(pos[None] - pos[:, None], 5.0)
    r = np.hypot(d[..., 0], d[..., 1])
    np.fill_diagonal(r, np.inf)
    ref = np.sort(r, axis=1)[:, :4]
    np.testing.assert_allclose(dist, ref, atol=1e-12)
    np.testing.assert_allclose(np.take_along_axis(r, idx, 1), ref, atol=1e-12)


def test_zone_radii_out_of_order_are_rejected():
    pos, dirs = _swarm(5, 2.0, seed=0)
    with pytest.raises(ValueError, match="r_near <= r_mid <= r_outer"):
        neighbour_sums(pos, dirs, 2.0, r_near=1.0, r_mid=0.5, r_outer=2.0)
