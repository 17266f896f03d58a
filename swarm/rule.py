"""What the hand-written rules share: the view they read, and their parameter checks.

A rule never sees the whole swarm. Its perception (:class:`swarm.perception.ZoneSums`) gives
it a :class:`LocalView` -- each agent's own heading and the sums over the neighbours it can see
(:mod:`swarm.neighbours`) -- and it returns one unit heading per agent. So a rule is a plain
:class:`envs.api.Policy` over a batch of agents; each rule object also carries the perception
and the :class:`swarm.perception.Motion` it was written for (``rule.perception``,
``rule.motion``), which is where its radii, blind angle and speed live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from swarm.neighbours import COL


@dataclass(frozen=True)
class LocalView:
    """A batch of local observations: one row per agent.

    Args:
        directions: (N, 2) unit headings at time t.
        sums: (N, 16) neighbour sums at time t (columns ``swarm.neighbours.SUM_COLUMNS``).
    """

    directions: np.ndarray
    sums: np.ndarray

    def column(self, name: str) -> np.ndarray:
        """One column of the sums by name (``'n_all'``), or a pair (``'d_all'`` -> dx, dy)."""
        if name in COL:
            return self.sums[:, COL[name]]
        prefix, _, zone = name.partition("_")
        k = COL[f"{prefix}x_{zone}"]  # x and y columns are adjacent: a view, not a copy
        return self.sums[:, k:k + 2]


def check_range(name: str, value: Any, lo: float, hi: float = math.inf, *,
                lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> float:
    """Returns ``value`` if it lies in the range, else a ValueError naming ``name`` and the range."""
    left = "(" if lo_open else "["
    right = ")" if hi_open or hi == math.inf else "]"
    hi_text = "inf" if hi == math.inf else f"{hi:g}"
    what = "an integer" if integer else "a number"
    bad_type = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if integer and not bad_type and not float(value).is_integer():
        bad_type = True
    if bad_type or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be {what} in {left}{lo:g}, {hi_text}{right}, got {value!r}")
    v = float(value)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (ok_lo and ok_hi):
        raise ValueError(f"{name} must be {what} in {left}{lo:g}, {hi_text}{right}, got {value!r}")
    return int(v) if integer else v


@numba.njit(cache=True)
def _normalize(vectors: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    out = np.empty((vectors.shape[0], 2))
    for i in range(vectors.shape[0]):
        norm = math.hypot(vectors[i, 0], vectors[i, 1])
        if norm > 0:
            out[i, 0] = vectors[i, 0] / norm
            out[i, 1] = vectors[i, 1] / norm
        else:
            out[i, 0] = fallback[i, 0]
            out[i, 1] = fallback[i, 1]
    return out


def normalize(vectors: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row takes the matching row of ``fallback``.

    Compiled, one pass: numpy's version makes five temporaries of the whole batch.
    """
    return _normalize(np.asarray(vectors, dtype=np.float64), np.asarray(fallback, dtype=np.float64))


def unit(angles: np.ndarray) -> np.ndarray:
    """(N,) angles -> (N, 2) unit vectors."""
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


RULES = ("reynolds", "vicsek", "couzin")


def make_rule(name: str, **params: Any) -> Any:
    """Builds a rule by name with its parameters; unknown names or parameters raise ValueError."""
    import inspect

    from swarm.couzin import Couzin
    from swarm.reynolds import Reynolds
    from swarm.vicsek import Vicsek

    classes = {"reynolds": Reynolds, "vicsek": Vicsek, "couzin": Couzin}
    if name not in classes:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {name!r}")
    cls = classes[name]
    allowed = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for rule {name!r} (allowed: {', '.join(allowed)})")
    return cls(**params)
