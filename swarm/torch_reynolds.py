"""The Reynolds step in PyTorch, for a GPU: a cell list built by sorting, gathered cell by cell.

Agents are sorted by cell; a padded (cells x max occupancy) table of agent ids lets every
agent gather the candidates of each of the 9 cells around it as one dense tensor, so the whole
step is a handful of batched tensor operations -- the shape a GPU wants. It computes exactly
the sums and update of :class:`swarm.reynolds.Reynolds` (checked against the numba path on
CPU in the tests). Agents are processed in chunks to bound the memory of the gathered blocks.
"""

from __future__ import annotations

import torch

from swarm.neighbours import cells_per_side
from swarm.reynolds import Reynolds


def _cell_table(cell: torch.Tensor, n_cells: int) -> torch.Tensor:
    """(n_cells, max occupancy) agent ids per cell, padded with -1."""
    order = torch.argsort(cell, stable=True)
    cell_sorted = cell[order]
    counts = torch.bincount(cell_sorted, minlength=n_cells)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(cell), device=cell.device) - starts[cell_sorted]
    table = torch.full((n_cells, int(counts.max()) if len(cell) else 0), -1, dtype=torch.long, device=cell.device)
    table[cell_sorted, rank] = order
    return table


@torch.no_grad()
def reynolds_step(positions: torch.Tensor, directions: torch.Tensor, box: float, rule: Reynolds,
                  *, chunk: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """One synchronous Reynolds step on ``positions``' device; returns new (positions, directions).

    Args:
        positions: (N, 2) positions in [0, box).
        directions: (N, 2) unit headings.
        box: Side of the periodic box.
        rule: The Reynolds parameters.
        chunk: Agents gathered at once. Default 2^20.
    """
    n = positions.shape[0]
    ncell = cells_per_side(box, rule.vision, n)
    if ncell < 3:
        ncell = 1  # a tiny box: every agent is a candidate of every other
    size = box / ncell
    cxy = torch.clamp((positions / size).long(), max=ncell - 1)
    table = _cell_table(cxy[:, 1] * ncell + cxy[:, 0], ncell * ncell)
    offsets = [(0, 0)] if ncell == 1 else [(ox, oy) for oy in (-1, 0, 1) for ox in (-1, 0, 1)]
    half, vis2, sep2 = 0.5 * box, rule.vision ** 2, rule.separation ** 2
    new_dirs = torch.empty_like(directions)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        me = torch.arange(lo, hi, device=positions.device)
        p, c = positions[lo:hi], cxy[lo:hi]
        count = torch.zeros(hi - lo, dtype=positions.dtype, device=positions.device)
        d_all = torch.zeros_like(p)
        d_near = torch.zeros_like(p)
        u_all = torch.zeros_like(p)
        for ox, oy in offsets:
            nb = ((c[:, 1] + oy) % ncell) * ncell + (c[:, 0] + ox) % ncell
            cand = table[nb]
            valid = (cand >= 0) & (cand != me[:, None])
            cj = cand.clamp(min=0)
            d = positions[cj] - p[:, None, :]
            d = torch.where(d > half, d - box, torch.where(d < -half, d + box, d))
            r2 = (d * d).sum(-1)
            seen = (valid & (r2 <= vis2)).to(p.dtype)
            close = seen * (r2 < sep2).to(p.dtype)
            count += seen.sum(1)
            d_all += (d * seen[..., None]).sum(1)
            d_near += (d * close[..., None]).sum(1)
            u_all += (directions[cj] * seen[..., None]).sum(1)
        steer = rule.cohere * d_all - rule.separate * d_near + rule.match * u_all
        new = directions[lo:hi] + steer / count.clamp(min=1.0)[:, None]
        norm = torch.linalg.vector_norm(new, dim=1, keepdim=True)
        new_dirs[lo:hi] = torch.where(norm > 0, new / torch.where(norm > 0, norm, 1.0), directions[lo:hi])
    moved = torch.remainder(positions + rule.motion.speed * new_dirs, box)
    moved = torch.where(moved >= box, moved - box, moved)
    return moved, new_dirs
