"""Neighbour search in a periodic square box: an O(N) cell list compiled with numba.

Every local rule needs, for each agent, a few sums over the neighbours it can see. The cell
list sorts agents into square cells no smaller than the largest interaction radius, so each
agent only looks at the 3 x 3 block of cells around its own; displacements use the minimum
image convention, so the box is a torus. One kernel accumulates every sum a rule may need,
split into three distance zones (the zones of Couzin et al. 2002; Reynolds and Vicsek use a
subset), and a brute-force O(N^2) numpy version of the same sums is the reference the tests
compare against.

Columns of the sums (``SUM_COLUMNS``), all over neighbours ``j != i`` that ``i`` can see
(outside its blind angle) at displacement ``d_ij = x_j - x_i`` (minimum image), distance ``r``:

* ``all`` zone (``r <= r_outer``): count, sum of d_ij, sum of unit headings of j.
* zone 0 (``r < r_near``): count, sum of d_ij, sum of d_ij / r.
* zone 1 (``r_near <= r < r_mid``): count, sum of unit headings of j.
* zone 2 (``r_mid <= r <= r_outer``): count, sum of d_ij / r.
"""

from __future__ import annotations

import math
import types

import numba
import numpy as np
from scipy.spatial import cKDTree

SUM_COLUMNS = (
    "n_all", "dx_all", "dy_all", "ux_all", "uy_all",
    "n_near", "dx_near", "dy_near", "ex_near", "ey_near",
    "n_mid", "ux_mid", "uy_mid",
    "n_far", "ex_far", "ey_far",
)
COL = {name: k for k, name in enumerate(SUM_COLUMNS)}
N_SUMS = len(SUM_COLUMNS)


@numba.njit(cache=True)
def _wrap(flat: np.ndarray, box: float) -> np.ndarray:
    out = np.empty_like(flat)
    for k in range(flat.shape[0]):
        p = flat[k] % box  # Python's float modulo: the same result as np.mod
        out[k] = p - box if p >= box else p
    return out


def wrap(positions: np.ndarray, box: float) -> np.ndarray:
    """Positions mapped into ``[0, box)`` (a modulo alone can return ``box`` for tiny negatives).

    Compiled: numpy's version makes three temporaries, a tenth of a step's time at N = 1e5.
    """
    p = np.ascontiguousarray(positions, dtype=np.float64)
    return _wrap(p.reshape(-1), float(box)).reshape(p.shape)


def minimum_image(delta: np.ndarray, box: float) -> np.ndarray:
    """Displacements mapped to their shortest periodic image, each component in [-box/2, box/2]."""
    return delta - box * np.round(delta / box)


def cells_per_side(box: float, radius: float, n_agents: int) -> int:
    """Cells per side: cells at least ``radius`` wide, and not many more cells than agents."""
    by_radius = int(box // radius) if radius > 0 else 1
    by_count = max(1, int(math.sqrt(4 * max(n_agents, 1))))
    return max(1, min(by_radius, by_count))


@numba.njit(cache=True, error_model="numpy")
def _cell_order(pos: np.ndarray, box: float, ncell: int) -> tuple[np.ndarray, np.ndarray]:
    """Counting sort of agents by cell: ``order`` (agent ids by cell) and ``starts`` per cell."""
    n = pos.shape[0]
    size = box / ncell
    cell = np.empty(n, np.int64)
    starts = np.zeros(ncell * ncell + 1, np.int64)
    for i in range(n):
        cx = min(int(pos[i, 0] / size), ncell - 1)
        cy = min(int(pos[i, 1] / size), ncell - 1)
        c = cy * ncell + cx
        cell[i] = c
        starts[c + 1] += 1
    for c in range(ncell * ncell):
        starts[c + 1] += starts[c]
    fill = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[cell[i]]] = i
        fill[cell[i]] += 1
    return order, starts


def _sums_sorted_py(pos: np.ndarray, dirs: np.ndarray, box: float, ncell: int, starts: np.ndarray,
                    r_near: float, r_mid: float, r_outer: float, cos_half_view: float) -> np.ndarray:
    """The neighbour sums of every agent, agents in cell order; (16, N), one row per sum.

    Writing each row in agent order keeps the stores sequential.
    """
    n = pos.shape[0]
    out = np.empty((16, n))
    size = box / ncell
    half = 0.5 * box
    r2_outer = r_outer * r_outer
    blind = cos_half_view > -1.0
    # With fewer than 3 cells per side the 3 x 3 stencil would visit a cell twice.
    span = 1 if ncell >= 3 else 0
    for i in numba.prange(n):
        xi = pos[i, 0]
        yi = pos[i, 1]
        hx = dirs[i, 0]
        hy = dirs[i, 1]
        cx = min(int(xi / size), ncell - 1)
        cy = min(int(yi / size), ncell - 1)
        n_all = 0.0
        dxa = 0.0
        dya = 0.0
        uxa = 0.0
        uya = 0.0
        n0 = 0.0
        dx0 = 0.0
        dy0 = 0.0
        ex0 = 0.0
        ey0 = 0.0
        n1 = 0.0
        ux1 = 0.0
        uy1 = 0.0
        n2 = 0.0
        ex2 = 0.0
        ey2 = 0.0
        lo_x = cx - span if span else 0
        hi_x = cx + span if span else ncell - 1
        lo_y = cy - span if span else 0
        hi_y = cy + span if span else ncell - 1
        for gy in range(lo_y, hi_y + 1):
            ny = gy + ncell if gy < 0 else (gy - ncell if gy >= ncell else gy)
            # With 3+ cells per side each neighbour cell holds exactly one image within reach,
            # so the periodic shift is fixed per cell instead of tested per pair.
            sy = yi + box if gy < 0 else (yi - box if gy >= ncell else yi)
            for gx in range(lo_x, hi_x + 1):
                c = ny * ncell + (gx + ncell if gx < 0 else (gx - ncell if gx >= ncell else gx))
                sx = xi + box if gx < 0 else (xi - box if gx >= ncell else xi)
                for j in range(starts[c], starts[c + 1]):
                    if j == i:
                        continue
                    dx = pos[j, 0] - sx
                    dy = pos[j, 1] - sy
                    if not span:
                        if dx > half:
                            dx -= box
                        elif dx < -half:
                            dx += box
                        if dy > half:
                            dy -= box
                        elif dy < -half:
                            dy += box
                    d2 = dx * dx + dy * dy
                    if d2 > r2_outer:
                        continue
                    r = math.sqrt(d2)
                    if blind and dx * hx + dy * hy < r * cos_half_view:
                        continue
                    n_all += 1.0
                    dxa += dx
                    dya += dy
                    uxa += dirs[j, 0]
                    uya += dirs[j, 1]
                    if r < r_near:
                        n0 += 1.0
                        dx0 += dx
                        dy0 += dy
                        if r > 0.0:
                            ex0 += dx / r
                            ey0 += dy / r
                    elif r < r_mid:
                        n1 += 1.0
                        ux1 += dirs[j, 0]
                        uy1 += dirs[j, 1]
                    else:
                        n2 += 1.0
                        ex2 += dx / r
                        ey2 += dy / r
        out[0, i] = n_all
        out[1, i] = dxa
        out[2, i] = dya
        out[3, i] = uxa
        out[4, i] = uya
        out[5, i] = n0
        out[6, i] = dx0
        out[7, i] = dy0
        out[8, i] = ex0
        out[9, i] = ey0
        out[10, i] = n1
        out[11, i] = ux1
        out[12, i] = uy1
        out[13, i] = n2
        out[14, i] = ex2
        out[15, i] = ey2
    return out


@numba.njit(cache=True)
def _gather(pos: np.ndarray, dirs: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pos[order], dirs[order]`` in one compiled pass (numpy's fancy indexing is slower)."""
    n = order.shape[0]
    ps = np.empty((n, 2))
    ds = np.empty((n, 2))
    for k in range(n):
        i = order[k]
        ps[k, 0] = pos[i, 0]
        ps[k, 1] = pos[i, 1]
        ds[k, 0] = dirs[i, 0]
        ds[k, 1] = dirs[i, 1]
    return ps, ds


def _renamed(fn, name: str):  # noqa: ANN001, ANN202
    """A copy of ``fn`` under another name. numba's on-disk cache is keyed by the function's
    qualified name, not by the compile flags, so two builds of one function would share (and
    overwrite) one cache entry: the parallel build would silently load the serial code."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    return copy


# The same kernel compiled twice: threads pay off only for large swarms, and a thread pool's
# start-up cost dominates a small step. error_model="numpy" drops the zero-division checks.
_sums_sorted_serial = numba.njit(cache=True, error_model="numpy")(_renamed(_sums_sorted_py, "_sums_sorted_serial"))
_sums_sorted_parallel = numba.njit(cache=True, parallel=True, error_model="numpy")(
    _renamed(_sums_sorted_py, "_sums_sorted_parallel"))
PARALLEL_MIN_AGENTS = 50_000


def _check_zones(r_near: float, r_mid: float, r_outer: float) -> None:
    if not (0 <= r_near <= r_mid <= r_outer):
        raise ValueError(
            f"zone radii must satisfy 0 <= r_near <= r_mid <= r_outer, got {r_near}, {r_mid}, {r_outer}"
        )


@numba.njit(cache=True)
def _unpermute(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``out[order[k]] = values[k]`` for a 2-D array, one column at a time (cache friendly)."""
    n, m = values.shape
    out = np.empty((n, m))
    for c in range(m):
        for k in range(n):
            out[order[k], c] = values[k, c]
    return out


def sorted_neighbour_sums(positions: np.ndarray, directions: np.ndarray, box: float, *,
                          r_near: float, r_mid: float, r_outer: float,
                          blind_angle: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour sums with agents in cell order, the form the engine steps in.

    Returns:
        ``(order, directions[order], sums)``: sums is (N, 16) in the order of ``order`` (a
        transposed view of a (16, N) array, so each column is contiguous).
    """
    _check_zones(r_near, r_mid, r_outer)
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    dirs = np.ascontiguousarray(directions, dtype=np.float64)
    n = pos.shape[0]
    ncell = cells_per_side(box, r_outer, n)
    order, starts = _cell_order(pos, float(box), ncell)
    # Working in cell order keeps each cell's agents adjacent in memory.
    pos_sorted, dirs_sorted = _gather(pos, dirs, order)
    kernel = _sums_sorted_parallel if n >= PARALLEL_MIN_AGENTS and numba.get_num_threads() > 1 else _sums_sorted_serial
    out = kernel(pos_sorted, dirs_sorted, float(box), ncell, starts,
                 float(r_near), float(r_mid), float(r_outer), math.cos(math.pi - 0.5 * blind_angle))
    return order, dirs_sorted, out.T


def unpermute(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows given in cell order (``values[k]`` belongs to agent ``order[k]``) back in agent order."""
    return _unpermute(np.asarray(values, dtype=np.float64), order)


def neighbour_sums(positions: np.ndarray, directions: np.ndarray, box: float, *,
                   r_near: float, r_mid: float, r_outer: float,
                   blind_angle: float = 0.0) -> np.ndarray:
    """Per-agent sums over visible neighbours in three distance zones (see ``SUM_COLUMNS``).

    Args:
        positions: (N, 2) positions in ``[0, box)``.
        directions: (N, 2) unit heading vectors.
        box: Side of the periodic square box.
        r_near: Outer radius of zone 0 (exclusive).
        r_mid: Outer radius of zone 1 (exclusive).
        r_outer: Interaction radius (inclusive); zone 2 is ``[r_mid, r_outer]``.
        blind_angle: Angular width (radians) of the blind region behind each agent. Default 0.

    Returns:
        An (N, 16) float64 array, one row per agent in the input order.
    """
    order, _, sums = sorted_neighbour_sums(positions, directions, box, r_near=r_near, r_mid=r_mid,
                                           r_outer=r_outer, blind_angle=blind_angle)
    return unpermute(sums, order)


def neighbour_sums_bruteforce(positions: np.ndarray, directions: np.ndarray, box: float, *,
                              r_near: float, r_mid: float, r_outer: float,
                              blind_angle: float = 0.0) -> np.ndarray:
    """The same sums as :func:`neighbour_sums` from all N^2 pairs (the reference; small N only)."""
    _check_zones(r_near, r_mid, r_outer)
    pos = np.asarray(positions, dtype=np.float64)
    dirs = np.asarray(directions, dtype=np.float64)
    n = len(pos)
    d = minimum_image(pos[None, :, :] - pos[:, None, :], box)  # d[i, j] = x_j - x_i
    r = np.hypot(d[..., 0], d[..., 1])
    visible = ~np.eye(n, dtype=bool) & (r <= r_outer)
    if blind_angle > 0:
        cos_half_view = math.cos(math.pi - 0.5 * blind_angle)
        visible &= np.einsum("ijk,ik->ij", d, dirs) >= r * cos_half_view
    safe_r = np.where(r > 0, r, 1.0)
    e = np.where((r > 0)[..., None], d / safe_r[..., None], 0.0)
    zone0 = visible & (r < r_near)
    zone1 = visible & (r >= r_near) & (r < r_mid)
    zone2 = visible & (r >= r_mid)
    out = np.zeros((n, N_SUMS))
    out[:, 0] = visible.sum(1)
    out[:, 1:3] = np.einsum("ij,ijk->ik", visible, d)
    out[:, 3:5] = visible.astype(float) @ dirs
    out[:, 5] = zone0.sum(1)
    out[:, 6:8] = np.einsum("ij,ijk->ik", zone0, d)
    out[:, 8:10] = np.einsum("ij,ijk->ik", zone0, e)
    out[:, 10] = zone1.sum(1)
    out[:, 11:13] = zone1.astype(float) @ dirs
    out[:, 13] = zone2.sum(1)
    out[:, 14:16] = np.einsum("ij,ijk->ik", zone2, e)
    return out


def neighbour_pairs(positions: np.ndarray, radius: float, box: float) -> np.ndarray:
    """All pairs ``i < j`` within ``radius`` (minimum image), as an (M, 2) int array.

    Uses scipy's periodic KD-tree (``boxsize``), an independent search from the cell list.
    """
    tree = cKDTree(wrap(np.asarray(positions, dtype=np.float64), box), boxsize=box)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)


def neighbour_pairs_bruteforce(positions: np.ndarray, radius: float, box: float) -> np.ndarray:
    """All pairs ``i < j`` within ``radius`` from the full distance matrix (the reference)."""
    pos = np.asarray(positions, dtype=np.float64)
    d = minimum_image(pos[None, :, :] - pos[:, None, :], box)
    r = np.hypot(d[..., 0], d[..., 1])
    i, j = np.nonzero(np.triu(r <= radius, k=1))
    return np.stack([i, j], axis=1)


def k_nearest(positions: np.ndarray, k: int, box: float) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's ``k`` nearest other agents (periodic): (N, k) distances and indices."""
    pos = wrap(np.asarray(positions, dtype=np.float64), box)
    if not 1 <= k < len(pos):
        raise ValueError(f"k must be in [1, n_agents - 1] = [1, {len(pos) - 1}], got {k}")
    dist, idx = cKDTree(pos, boxsize=box).query(pos, k=k + 1)
    # The first hit is the agent itself (distance 0); a coincident neighbour could come
    # first instead, so drop the self index explicitly rather than the first column.
    keep = idx != np.arange(len(pos))[:, None]
    rows = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, rows, 1), np.take_along_axis(idx, rows, 1)
