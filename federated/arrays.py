"""The one converter between Flower's ``ArrayRecord`` and plain ``{name: numpy array}`` dicts.

Flower moves a model as an ``ArrayRecord``; the math of this project (FedAvg's weighted mean,
secure aggregation's flat vector, checkpoints) works on numpy arrays keyed by parameter name.
Every crossing between the two goes through :func:`to_numpy` and :func:`from_numpy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_numpy(arrays: Any, *, copy: bool = True) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as ``{name: array}``, in the record's order.

    Args:
        arrays: An ``flwr.app.ArrayRecord``.
        copy: Copy each array (default), so the dict outlives and never aliases the record;
            False for a read-only use that should not pay for the copies (an average).
    """
    if copy:
        return {k: np.array(v.numpy(), copy=True) for k, v in arrays.items()}
    return {k: v.numpy() for k, v in arrays.items()}


def from_numpy(weights: Mapping[str, Any]) -> Any:
    """``{name: array}`` as an ``ArrayRecord`` (the inverse of :func:`to_numpy`), in the dict's order."""
    from flwr.app import Array, ArrayRecord

    # order="C", not np.ascontiguousarray: the latter turns a 0-d array (a step counter) into shape (1,).
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in weights.items()})
