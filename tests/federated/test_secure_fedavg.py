"""SecureFedAvg inside Flower: equal to Flower's own FedAvg within the quantization bound."""

from __future__ import annotations

import numpy as np
import pytest

from federated.secure_fedavg import (
    SecAggParams,
    client_vector,
    flatten,
    split_run_config,
    unflatten,
)
from secure_agg import Quantization, SecAggError, simulate

F32 = np.finfo(np.float32).eps


def test_client_vectors_sum_to_the_weighted_average() -> None:
    # Pure check of the client-side weighting: the secure sum of client_vector()s, decoded as
    # SecureAggregation decodes it, is the example-weighted mean (Flower's FedAvg rule); a
    # metric one client lacks is averaged over the clients that report it.
    rng = np.random.default_rng(0)
    like = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    models = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in like.items()} for _ in range(4)]
    counts, losses = [10, 50, 7, 33], [0.5, 1.0, 2.0, 0.25]
    metrics = [{"train_loss": loss} for loss in losses]
    del metrics[2]["train_loss"]  # client 2 reports no loss
    vectors = [client_vector(m, n, met, ("train_loss",), clip=8.0, bits=32, max_weight=100, num_clients=4)
               for m, n, met in zip(models, counts, metrics, strict=True)]
    total = simulate(vectors, 3, seed=0).aggregate.astype(np.uint64)
    q = Quantization(8.0, 32).for_clients(4)
    summed = q.dequantize(total[:-1], 4)
    assert int(total[-1]) == sum(counts)
    scale = 100 / sum(counts)
    ref = sum(n * flatten(m) for m, n in zip(models, counts, strict=True)) / sum(counts)
    bound = q.error_bound(4) * scale
    size = ref.size
    assert np.max(np.abs(summed[:size] * scale - ref)) <= bound
    reporting = [0, 1, 3]
    loss_ref = sum(counts[i] * losses[i] for i in reporting) / sum(counts[i] for i in reporting)
    assert abs(summed[size] / summed[size + 1] - loss_ref) <= 1e-6
    assert abs(summed[size + 1] * 100 - sum(counts[i] for i in reporting)) <= 1e-3
    back = unflatten(ref, like)
    assert back["w"].shape == (3, 4) and back["b"].dtype == np.float32


def test_params_validation_and_run_config_split() -> None:
    rest, params = split_run_config({"num-server-rounds": 2, "secagg-clip": 4, "secagg-neighbours": 4})
    assert rest == {"num-server-rounds": 2} and params.clip == 4.0 and params.neighbours == 4
    assert params.threshold_for(10) == 3  # ceil(0.5 * 5 holders)
    with pytest.raises(ValueError, match="threshold"):
        SecAggParams(threshold=0)
    with pytest.raises(ValueError, match="run-config key 'secagg-threshold': Input should be greater than 0"):
        SecAggParams.from_run_config({"secagg-threshold": 0.0})
    with pytest.raises(ValueError, match="unknown run-config key 'secagg-foo'"):
        split_run_config({"secagg-foo": 1})
    with pytest.raises(SecAggError, match="max-weight"):
        client_vector({"w": np.zeros(2)}, 500, {}, (), clip=8.0, bits=32, max_weight=100, num_clients=3)
    # The threshold is raised to the clients' own minimum: more than half, two thirds if active.
    assert SecAggParams(threshold=0.1).threshold_for(10) == 6
    assert SecAggParams(threshold=0.1, active=True).threshold_for(9) == 7
    assert SecAggParams.from_run_config({"secagg-active": True}).active is True
    with pytest.raises(ValueError, match="run-config key 'secagg-active': Input should be a valid boolean"):
        SecAggParams.from_run_config({"secagg-active": "yes"})


def test_pipelined_rounds_match_flower_fedavg_through_a_failure() -> None:
    from federated.secure_client_app import train_task_model
    from federated.secure_server_app import simulate_comparison

    def flaky(arrays, context, server_round):
        # Partition 2 fails in round 2: both aggregations then average the other two clients.
        if server_round == 2 and int(context.node_config["partition-id"]) == 2:
            raise RuntimeError("injected client failure")
        return train_task_model(arrays, context, server_round, overrides)

    overrides = {"num-server-rounds": 3, "num-partitions": 3, "fraction-evaluate": 0.0, "hidden": 16,
                 "secagg-seed": 3, "secagg-threshold": 0.6, "round-timeout": 600.0}  # slack for a loaded machine
    result = simulate_comparison(overrides, 3, local_train=flaky)
    history = result["history"]
    assert [r["survivors"] for r in history] == [3, 2, 3]
    # The plain reference must have averaged the same clients, or a difference would blame
    # the secure aggregate for a reply the plain round lost (issue 12, point 7).
    assert [r["plain_replies"] for r in history] == [3, 2, 3]
    # Round 1 opens its session; round 2 uses the one opened during round 1; partition 2 failed
    # in round 2, so it holds no keys for round 3, which therefore opens a fresh session with it.
    assert [r["pipelined"] for r in history] == [False, True, False]
    for record in history:
        largest = max(float(np.max(np.abs(w))) for w in result["weights"].values())
        # Quantization bound plus float32 rounding of both results.
        assert record["max_abs_diff"] <= record["error_bound"] + 4 * F32 * largest
        assert 0 <= record["test_acc"] <= 1
