"""Shamir sharing over GF(2**31 - 1): any t shares reconstruct, t - 1 reveal nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secure_agg import SecAggError
from secure_agg.randomness import RandomSource
from secure_agg.shamir import (
    PRIME,
    reconstruct,
    reconstruct_bytes,
    share,
    share_bytes,
)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), data=st.data())
def test_any_t_shares_reconstruct(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    xs = np.arange(1, n + 1)
    shares = share_bytes(secret, xs, t, RandomSource(data.draw(st.integers(0, 10**6))))
    for subset in itertools.islice(itertools.combinations(range(n), t), 20):
        idx = list(subset)
        assert reconstruct_bytes(xs[idx], shares[idx], t, 32) == secret


def test_t_minus_one_shares_fail_and_look_uniform() -> None:
    t, xs = 4, np.arange(1, 8)
    secret = np.array([123456, 42], dtype=np.int64)
    shares = share(secret, xs, t, RandomSource(7))
    with pytest.raises(SecAggError, match="needs 4 shares"):
        reconstruct(xs[: t - 1], shares[: t - 1], t)
    assert not np.array_equal(reconstruct(xs[: t - 1], shares[: t - 1], t - 1), secret)
    # Perfect hiding: with t = 3, any 2 shares are uniform whatever the secret (chi-square).
    for value in (0, PRIME - 1):
        rows = share(np.full(4000, value, dtype=np.int64), np.array([2, 5, 9]), 3, RandomSource(value))[:2]
        counts = np.bincount((rows.ravel() * 16) // PRIME, minlength=16)
        assert chisquare(counts).pvalue > 1e-4


def test_reconstruction_matches_plain_lagrange() -> None:
    rng = RandomSource(3)
    secret = np.array([5, 77, PRIME - 2], dtype=np.int64)
    xs = np.array([3, 9, 14, 20])
    ys = share(secret, xs, 3, rng)
    # Reference: exact Python-integer Lagrange interpolation at 0.
    ref = []
    for c in range(3):
        total = 0
        for i in range(3):
            num = den = 1
            for j in range(3):
                if i != j:
                    num = num * int(xs[j]) % PRIME
                    den = den * (int(xs[j]) - int(xs[i])) % PRIME
            total += int(ys[i, c]) * num * pow(den, PRIME - 2, PRIME)
        ref.append(total % PRIME)
    assert ref == secret.tolist()
    assert reconstruct(xs[1:], ys[1:], 3).tolist() == secret.tolist()


def test_bad_parameters_raise() -> None:
    with pytest.raises(SecAggError, match="threshold"):
        share(np.array([1]), np.array([1, 2]), 3, RandomSource(0))
    with pytest.raises(SecAggError, match="distinct"):
        share(np.array([1]), np.array([1, 1]), 2, RandomSource(0))
    with pytest.raises(SecAggError, match="distinct"):
        share(np.array([1]), np.array([0, 1]), 2, RandomSource(0))
