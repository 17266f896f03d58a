"""One point of a phase diagram: run a swarm past its transient and average its order.

These are the functions a sweep ships to Ray workers; each takes its own seed, so a sweep
gives the same numbers in parallel or in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from swarm.engine import simulate


def point_seed(base: int, *index: int) -> int:
    """A seed for one sweep point from the run's seed and the point's indices."""
    return int(np.random.SeedSequence([base, *index]).generate_state(1, np.uint64)[0] >> 1)


def steady_order(rule: str, n_agents: int, steps: int, transient: int, seed: int,
                 density: float | None = None, box: float | None = None,
                 init_radius: float | None = None, record_every: int = 1,
                 keep_state: bool = False, **params: Any) -> dict[str, Any]:
    """Mean and standard deviation over time, after ``transient`` steps, of polarization and rotation.

    Returns:
        ``polarization``, ``polarization_sd``, ``rotation``, ``rotation_sd`` (floats), and
        with ``keep_state`` the final ``positions``, ``headings`` and ``box``.
    """
    result = simulate(rule, n_agents, steps, seed=seed, density=density, box=box,
                      init_radius=init_radius, record=("polarization", "rotation"),
                      record_every=record_every, **params)
    after = result.steps >= transient
    out: dict[str, Any] = {}
    for name in ("polarization", "rotation"):
        series = result.metrics[name][after]
        out[name] = float(series.mean())
        out[f"{name}_sd"] = float(series.std())
    if keep_state:
        out.update(positions=result.positions, headings=result.headings, box=result.box)
    return out
