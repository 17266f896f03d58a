"""Shamir t-of-n secret sharing over the prime field GF(2**31 - 1), exact and vectorized.

A 32-byte secret is cut into 24-bit chunks (each below the prime) and every chunk is shared
with its own random polynomial of degree t - 1, so the scheme stays perfectly hiding chunk by
chunk. The field is small enough that a product of two elements fits in 62 bits, which lets
numpy evaluate all polynomials at all points at once (Horner over t steps) and reconstruct
many secrets with one set of Lagrange coefficients, all in exact int64 arithmetic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from secure_agg.errors import SecAggError
from secure_agg.randomness import RandomSource

PRIME = 2**31 - 1
CHUNK_BYTES = 3


def secret_to_field(secret: bytes) -> np.ndarray:
    """Splits bytes into field elements of 24 bits each (the last chunk zero-padded)."""
    padded = secret + bytes(-len(secret) % CHUNK_BYTES)
    raw = np.frombuffer(padded, dtype=np.uint8).reshape(-1, CHUNK_BYTES).astype(np.int64)
    return raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)


def field_to_secret(chunks: np.ndarray, length: int) -> bytes:
    """Inverse of :func:`secret_to_field`; raises if a chunk is not a 24-bit value."""
    chunks = np.asarray(chunks, dtype=np.int64)
    if np.any((chunks < 0) | (chunks >= 1 << (8 * CHUNK_BYTES))):
        raise SecAggError("Shamir reconstruction produced an out-of-range chunk: the shares are inconsistent")
    raw = np.stack([(chunks >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)
    return raw.tobytes()[:length]


def share(secrets: np.ndarray, xs: np.ndarray, threshold: int, rng: RandomSource) -> np.ndarray:
    """Shares field vectors among holders at points ``xs``.

    Args:
        secrets: Field elements, shape ``(chunks,)``; each is shared independently.
        xs: Distinct nonzero evaluation points, one per holder.
        threshold: t, the number of shares needed to reconstruct (1 <= t <= len(xs)).
        rng: Source of the polynomial coefficients.

    Returns:
        Shares of shape ``(len(xs), chunks)``: row i is the holder at ``xs[i]``.
    """
    xs = np.asarray(xs, dtype=np.int64)
    secrets = np.asarray(secrets, dtype=np.int64)
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold must be between 1 and the number of holders ({len(xs)}), got {threshold}")
    if np.any((xs <= 0) | (xs >= PRIME)) or len(np.unique(xs)) != len(xs):
        raise SecAggError("Shamir points must be distinct and in [1, p)")
    if np.any((secrets < 0) | (secrets >= PRIME)):
        raise SecAggError("Shamir secrets must be field elements in [0, p)")
    coeffs = rng.uniform_mod(PRIME, (threshold - 1, secrets.size))
    # Horner from the highest coefficient: acc = acc * x + a_j, all holders at once.
    # In place: x < 2**31 and acc < 2**31 keep acc * x + a below 2**62, so int64 never overflows.
    acc = np.zeros((len(xs), secrets.size), dtype=np.int64)
    x = xs[:, None]
    for j in range(threshold - 2, -1, -1):
        np.multiply(acc, x, out=acc)
        np.add(acc, coeffs[j], out=acc)
        np.remainder(acc, PRIME, out=acc)
    np.multiply(acc, x, out=acc)
    np.add(acc, secrets, out=acc)
    return np.remainder(acc, PRIME, out=acc)


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> np.ndarray:
    x = np.array(xs, dtype=np.int64)
    num = np.ones(len(x), dtype=np.int64)
    den = np.ones(len(x), dtype=np.int64)
    for j in range(len(x)):
        other = np.arange(len(x)) != j
        num[other] = num[other] * x[j] % PRIME
        den[other] = den[other] * ((x[j] - x[other]) % PRIME) % PRIME
    inv = np.array([pow(int(d), PRIME - 2, PRIME) for d in den], dtype=np.int64)
    return num * inv % PRIME


def lagrange_at_zero(xs: np.ndarray | list[int]) -> np.ndarray:
    """Lagrange coefficients that interpolate a polynomial at 0 from its values at ``xs``."""
    key = tuple(int(v) for v in xs)
    if len(set(key)) != len(key) or any(v <= 0 or v >= PRIME for v in key):
        raise SecAggError("Shamir points must be distinct and in [1, p)")
    return _lagrange_at_zero(key)


def reconstruct(xs: np.ndarray | list[int], ys: np.ndarray, threshold: int) -> np.ndarray:
    """Recovers the shared field vector from at least ``threshold`` shares.

    Args:
        xs: The holders' points.
        ys: Their shares, shape ``(len(xs), chunks)`` (or ``(len(xs), secrets, chunks)``
            to reconstruct several secrets held at the same points at once).
        threshold: t; fewer shares raise, extra ones are ignored.
    """
    if len(xs) < threshold:
        raise SecAggError(f"Shamir needs {threshold} shares, only {len(xs)} available")
    xs = list(xs)[:threshold]
    ys = np.asarray(ys, dtype=np.int64)[:threshold]
    lam = lagrange_at_zero(xs).reshape((threshold,) + (1,) * (ys.ndim - 1))
    return (lam * ys % PRIME).sum(axis=0) % PRIME


def share_bytes(secret: bytes, xs: np.ndarray, threshold: int, rng: RandomSource) -> np.ndarray:
    """Shares a byte string; returns ``(len(xs), chunks)`` field elements."""
    return share(secret_to_field(secret), xs, threshold, rng)


def reconstruct_bytes(xs: np.ndarray | list[int], ys: np.ndarray, threshold: int, length: int) -> bytes:
    """Recovers a byte string of ``length`` bytes shared with :func:`share_bytes`."""
    return field_to_secret(reconstruct(xs, ys, threshold), length)
