"""Exact secure aggregation: the securely aggregated mean equals Flower FedAvg's bit for bit.

The clients' words come from :func:`federated.secure_mod.client_vector` (what the mod sends),
are masked and summed by the real protocol (:func:`secure_agg.simulate`: key agreement, Shamir
shares, pair and self masks), and are decoded by :func:`federated.secure_aggregation.decode_sum`
(what :class:`federated.SecureAggregation` hands its wrapped FedAvg). The reference is Flower's
own ``FedAvg.aggregate_train`` on the clients' plain replies.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from federated.secure_aggregation import decode_sum, unflatten
from federated.secure_mod import client_vector
from secure_agg import Quantization, simulate

SHAPES = {"w": (60, 50), "b": (50,)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower stamps a Message with the run of the current process (a ServerApp's).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Magnitudes log-uniform in [1e-4, 4] with random signs: exponents 16 binades apart.
    def draw(shape: tuple[int, ...]) -> np.ndarray:
        mag = np.exp(rng.uniform(np.log(1e-4), np.log(4.0), size=shape))
        return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)

    return {k: draw(s) for k, s in SHAPES.items()}


def _secure_mean(models: list[dict[str, np.ndarray]], n: int, max_weight: int, bits: int) -> dict[str, np.ndarray]:
    k = len(models)
    vectors = [client_vector(m, n, {}, (), clip=8.0, bits=bits, max_weight=max_weight, num_clients=k)
               for m in models]
    total = simulate(vectors, k // 2 + 1, seed=0, bits=bits).aggregate
    quantizer = Quantization(8.0, bits).for_clients(k)
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    average, _ = decode_sum(total, quantizer, k, max_weight, size)
    return unflatten(average, models[0])


def _flower_mean(models: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    replies = [Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in m.items()}),
                                   "metrics": MetricRecord({"num-examples": n})}),
                       dst_node_id=0, message_type="train") for m in models]
    arrays, _ = FedAvg().aggregate_train(1, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("n, max_weight", [(1600, 1600), (1600, 2048), (12800, 16384)])
def test_two_equal_weight_clients_give_flower_fedavg_bit_for_bit(n: int, max_weight: int) -> None:
    # w = 1 (max_weight = n, as fed_mappo sets it) or a dyadic w (max_weight a power of two).
    rng = np.random.default_rng(n + max_weight)
    models = [_model(rng), _model(rng)]
    secure, flower = _secure_mean(models, n, max_weight, 64), _flower_mean(models, n)
    for name in SHAPES:
        assert secure[name].dtype == flower[name].dtype == np.float32
        assert np.array_equal(secure[name], flower[name]), name


def test_32_bit_words_are_not_exact_but_within_the_bound() -> None:
    # With 32-bit words the step (2**-26 at clip 8, 2 clients) is coarser than a float32's
    # lowest bit for entries above 2**-5: the mean is within the bound, not bit-equal.
    rng = np.random.default_rng(1)
    models = [_model(rng), _model(rng)]
    secure, flower = _secure_mean(models, 100, 100, 32), _flower_mean(models, 100)
    q = Quantization(8.0, 32).for_clients(2)
    assert q.scale == 2.0**26
    diff = max(float(np.max(np.abs(secure[k].astype(np.float64) - flower[k]))) for k in SHAPES)
    largest = max(float(np.max(np.abs(flower[k]))) for k in SHAPES)
    assert 0 < diff <= q.error_bound(2) / 2 + np.finfo(np.float32).eps * largest


def test_more_clients_give_the_correctly_rounded_mean() -> None:
    # Four equal clients: the secure mean is the exact mean rounded once to float32 (the
    # float64 sum of these float32s is exact); Flower's float32 running sum rounds three
    # times, each by at most half a float32 epsilon of the partial sum's magnitude.
    rng = np.random.default_rng(4)
    models = [_model(rng) for _ in range(4)]
    secure, flower = _secure_mean(models, 100, 100, 64), _flower_mean(models, 100)
    for name in SHAPES:
        exact = np.sum([m[name].astype(np.float64) for m in models], axis=0) / 4
        assert np.array_equal(secure[name], exact.astype(np.float32)), name
        partial = np.sum([np.abs(m[name].astype(np.float64)) for m in models], axis=0) / 4
        gap = np.abs(secure[name].astype(np.float64) - flower[name])
        assert np.all(gap <= 2 * np.finfo(np.float32).eps * partial), name
        assert np.any(gap > 0)  # three roundings do differ from one somewhere


def test_64_bit_quantizer_round_trips_float32_exactly_and_keeps_its_bound() -> None:
    rng = np.random.default_rng(5)
    q = Quantization(8.0, 64).for_clients(10)  # raised 'could wrap' before the scale was a power of two
    assert q.scale == 2.0**56 and 2 * q.offset * 10 <= 2**64 - 1
    x = _model(rng)["w"].ravel()
    # Every float32 whose lowest bit is >= 2**-56 comes back exactly through one client's words.
    np.testing.assert_array_equal(q.dequantize(q.quantize(x), 1), x.astype(np.float64))
    tiny = np.array([3e-20, -7e-19, 2.0**-57 * 3, 8.5, -9.0])  # below one step, and clipped
    back = q.dequantize(q.quantize(tiny), 1)
    assert np.max(np.abs(back - np.clip(tiny, -8, 8))) <= q.error_bound(1)
    assert back[3] == 8.0 and back[4] == -8.0
