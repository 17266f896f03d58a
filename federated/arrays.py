"""The one converter between Flower's ``ArrayRecord`` and plain ``{name: numpy array}`` dicts.

Flower moves a model as an ``ArrayRecord``; the math of this project (FedAvg's weighted mean,
secure aggregation's flat vector, checkpoints) works on numpy arrays keyed by parameter name.
Every crossing between the two goes through :func:`to_numpy` and :func:`from_numpy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any

import numpy as np

# The .npy header versions whose reader numpy exports (3.0 differs only in its encoding; it goes
# through Flower's numpy()).
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def to_numpy(arrays: Any, *, copy: bool = True) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as ``{name: array}``, in the record's order.

    Args:
        arrays: An ``flwr.app.ArrayRecord``.
        copy: Copy each array (default), so the dict outlives and never aliases the record;
            False for a read-only use that should not pay for the copies (an average).
    """
    if copy:
        return {k: np.array(v.numpy(), copy=True) for k, v in arrays.items()}
    return {k: _view(v) for k, v in arrays.items()}


def _view(array: Any) -> np.ndarray:
    """A read-only view of a Flower ``Array``'s bytes as the array they hold.

    Flower's ``Array.numpy()`` runs ``np.load`` on a copy of the bytes; for a NumPy-serialized
    array (the ``.npy`` format ``Array(ndarray)`` writes) the header says dtype, shape and
    order, and the data after it is the array itself. A secure-aggregation client reads its
    whole model this way every round (1 ms per 4 MB). Anything else (another serialization,
    an object dtype, a truncated buffer) goes through ``numpy()``, which raises as it would.
    """
    from flwr.common.constant import SType

    data = getattr(array, "data", None)
    if getattr(array, "stype", None) != SType.NUMPY or not isinstance(data, bytes):
        return array.numpy()
    head = BytesIO(data[:4096])
    try:
        read = _NPY_HEADERS.get(np.lib.format.read_magic(head))
        if read is None:
            return array.numpy()
        shape, fortran, dtype = read(head)
    except (ValueError, OSError):
        return array.numpy()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or head.tell() + count * dtype.itemsize != len(data):
        return array.numpy()
    return np.frombuffer(data, dtype=dtype, count=count, offset=head.tell()).reshape(shape, order="F" if fortran else "C")


def from_numpy(weights: Mapping[str, Any]) -> Any:
    """``{name: array}`` as an ``ArrayRecord`` (the inverse of :func:`to_numpy`), in the dict's order."""
    from flwr.app import Array, ArrayRecord

    # order="C", not np.ascontiguousarray: the latter turns a 0-d array (a step counter) into shape (1,).
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in weights.items()})
