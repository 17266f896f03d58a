"""federated.arrays: the one ArrayRecord <-> numpy converter, against Flower's own record."""

import numpy as np
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
