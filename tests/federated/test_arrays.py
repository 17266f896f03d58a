"""federated.arrays: the one ArrayRecord <-> numpy converter, against Flower's own record."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from federated.arrays import from_numpy, to_numpy


def test_round_trip_is_exact_and_keeps_names_order_and_dtypes() -> None:
    weights = {"b.weight": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
               "a.bias": np.array([1.5, -2.25], dtype=np.float64),
               "steps": np.array(7, dtype=np.int64)}
    record = from_numpy(weights)
    back = to_numpy(record)
    assert list(back) == list(weights)
    for name, value in weights.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    # Flower's own view of the record holds the same arrays.
    for mine, flowers in zip(back.values(), record.to_numpy_ndarrays(), strict=True):
        assert np.array_equal(mine, flowers)


def test_to_numpy_equals_a_torch_state_dict_record_and_copies_by_default() -> None:
    model = torch.nn.Linear(3, 2)
    record = ArrayRecord(model.state_dict())
    got = to_numpy(record)
    assert all(np.array_equal(got[k], v.detach().numpy()) for k, v in model.state_dict().items())
    got["weight"][0, 0] = 1e9  # a copy: the record is unchanged
    assert to_numpy(record)["weight"][0, 0] != 1e9
    assert np.array_equal(to_numpy(record, copy=False)["bias"], to_numpy(record)["bias"])


def test_views_equal_flowers_numpy_for_every_layout_and_are_read_only() -> None:
    from flwr.app import Array

    arrays = {"transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # saved in Fortran order
              "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
              "scalar": np.array(7, dtype=np.int64), "empty": np.zeros((0, 3)), "bool": np.array([True, False]),
              "complex": np.array([1 + 2j, -0.5j]), "large": np.linspace(-1, 1, 100_001, dtype=np.float32)}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    views = to_numpy(record, copy=False)
    for name, value in arrays.items():
        flowers = record[name].numpy()
        got = views[name]
        assert got.dtype == flowers.dtype and got.shape == flowers.shape and np.array_equal(got, flowers), name
        assert np.array_equal(got, value), name
        assert not got.flags.writeable, name  # a view of the record's bytes, never a way to change them
    # An array Flower cannot read as numpy fails exactly as Flower's own numpy() does.
    raw = Array(dtype="float32", shape=(2,), stype="raw-bytes", data=bytes(8))
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        to_numpy(ArrayRecord({"raw": raw}), copy=False)
    truncated = Array(dtype="float32", shape=(4,), stype=record["large"].stype, data=record["large"].data[:200])
    with pytest.raises(ValueError):
        to_numpy(ArrayRecord({"cut": truncated}), copy=False)
