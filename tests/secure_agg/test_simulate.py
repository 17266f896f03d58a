"""End-to-end sessions: the server's result equals the plain sum of the survivors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secure_agg import MASKED_INPUT, ROUNDS, Quantization, SecAggError, simulate
from secure_agg.wire import decode


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_integer_sum_is_exact_under_dropouts(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 6), label="n")
    t = data.draw(st.integers(n // 2 + 1, n), label="t")  # clients refuse t <= n / 2
    seed = data.draw(st.integers(0, 1000), label="seed")
    rng = np.random.default_rng(seed)
    vectors = [rng.integers(0, (2**32 - 1) // n + 1, size=7, dtype=np.int64) for _ in range(n)]
    budget = n - t
    order = data.draw(st.permutations(range(n)), label="order")[:budget]
    dropouts = {r: [] for r in ROUNDS}
    for u in order:
        dropouts[data.draw(st.sampled_from(ROUNDS))].append(u)
    result = simulate(vectors, t, dropouts=dropouts, seed=seed)
    gone_before_masking = set(dropouts["advertise_keys"]) | set(dropouts["share_keys"]) | set(dropouts["masked_input"])
    assert result.survivors == sorted(set(range(n)) - gone_before_masking)
    expected = np.sum([vectors[u] for u in result.survivors], axis=0)
    assert np.array_equal(result.aggregate, expected)


@pytest.mark.parametrize(("neighbours", "dropouts"), [
    (2, {"masked_input": [3]}),
    (4, {"masked_input": [3], "unmasking": [5]}),
])
def test_secagg_plus_graph_sum_is_exact(neighbours: int, dropouts: dict[str, list[int]]) -> None:
    # Each client has k + 1 share holders and refuses t <= (k + 1) / 2; with t = k // 2 + 1 it
    # survives k - t + 1 of them dropping.
    rng = np.random.default_rng(1)
    vectors = [rng.integers(0, 1000, size=11) for _ in range(12)]
    result = simulate(vectors, threshold=neighbours // 2 + 1, neighbours=neighbours, seed=4, dropouts=dropouts)
    assert result.dropped == [3]
    assert np.array_equal(result.aggregate, np.sum([v for i, v in enumerate(vectors) if i != 3], axis=0))
    full = simulate(vectors, threshold=7, seed=4)
    # Pairing with k neighbours instead of n - 1 shrinks what each client downloads.
    assert max(result.bytes_received.values()) < min(full.bytes_received.values())


def test_float_sum_within_quantization_bound() -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.uniform(-2, 2, size=50) for _ in range(5)]
    result = simulate(vectors, 3, quantization=Quantization(clip=2.0, bits=24), seed=0,
                      dropouts={"unmasking": [1]})
    bound = result.error_bound
    # Half a step per client; the step is the largest power of two below (2**24 - 1) // 5 / 4.
    assert bound == 5 / (2 * 2.0**19) and 2.0**20 > ((2**24 - 1) // 5) / 4.0 > 2.0**19
    assert np.max(np.abs(result.aggregate - np.sum(vectors, axis=0))) <= bound


def test_masked_vector_is_uniform() -> None:
    seen = {}

    def capture(round_name, sender, recipient, data):
        if round_name == MASKED_INPUT and recipient == "server":
            seen[sender] = decode(data[:-64])["masked"]  # replies end with a 64-byte signature
        return data

    n, dim = 3, 60000
    vectors = [np.full(dim, 7, dtype=np.int64) for _ in range(n)]
    simulate(vectors, 2, seed=11, tamper=capture)
    counts = np.bincount((seen[0] >> np.uint32(28)).astype(np.int64), minlength=16)
    assert chisquare(counts).pvalue > 1e-4
    # The same statistic rejects the unmasked input outright, so the test can fail.
    assert np.bincount((vectors[0] >> 28), minlength=16).max() == dim


def test_too_many_dropouts_raise_before_unmasking() -> None:
    vectors = [np.arange(4) for _ in range(5)]
    revealed = []

    def watch(round_name, sender, recipient, data):
        if round_name == "unmasking":
            revealed.append(sender)
        return data

    for rnd in ROUNDS:
        revealed.clear()
        with pytest.raises(SecAggError, match="fewer than the threshold"):
            simulate(vectors, 4, dropouts={rnd: [0, 1]}, seed=1, tamper=watch)
        # Dropouts before unmasking stop the server before it asks for any share; dropouts
        # during unmasking leave it with 3 < t shares of every secret.
        # (Without active mode, a drop before the consistency check is a drop before unmasking.)
        assert len([s for s in revealed if s != "server"]) == (3 if rnd in ("consistency_check", "unmasking") else 0)


def test_bad_inputs_rejected() -> None:
    ints = [np.arange(4) for _ in range(3)]
    with pytest.raises(SecAggError, match="same length"):
        simulate([np.arange(4), np.arange(4), np.arange(5)], 2)
    with pytest.raises(SecAggError, match="quantization"):
        simulate([np.ones(3), np.ones(3)], 2)
    with pytest.raises(SecAggError, match="wrap"):
        simulate([np.full(3, 2**31), np.full(3, 2**31)], 2)
    with pytest.raises(SecAggError, match="threshold"):
        simulate(ints, 4)
    with pytest.raises(SecAggError, match="dropouts keys"):
        simulate(ints, 2, dropouts={"round9": [0]})
    with pytest.raises(SecAggError, match="even"):
        simulate([np.arange(4) for _ in range(5)], 2, neighbours=3)
    with pytest.raises(SecAggError, match="wrap"):
        Quantization(clip=1.0, bits=8, scale=100.0).for_clients(10)


@pytest.mark.parametrize(("neighbours", "threshold", "dropouts"), [
    (None, 9, {"share_keys": [1], "masked_input": [4], "consistency_check": [6]}),  # t > 2/3 x 12
    (None, 9, {"unmasking": [2, 9]}),
    (6, 5, {"masked_input": [3], "consistency_check": [8]}),
])
def test_active_mode_sum_is_exact_under_dropouts(neighbours, threshold, dropouts) -> None:
    rng = np.random.default_rng(5)
    vectors = [rng.integers(0, 1000, size=9) for _ in range(12)]
    result = simulate(vectors, threshold, dropouts=dropouts, neighbours=neighbours, seed=3, active=True)
    gone = set(dropouts.get("share_keys", [])) | set(dropouts.get("masked_input", []))
    # A client that drops at the consistency check already sent its masked input: it is summed.
    assert result.survivors == sorted(set(range(12)) - gone)
    assert np.array_equal(result.aggregate, np.sum([vectors[u] for u in result.survivors], axis=0))
    assert result.discarded == {}


def test_refusals_are_reported_when_the_session_fails() -> None:
    with pytest.raises(SecAggError, match=r"only 0 clients remain.*client 0 refuses: threshold 2 is at or below"):
        simulate([np.arange(3)] * 4, 2, seed=0)
