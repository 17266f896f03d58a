"""Shamir t-of-n secret sharing over the prime field GF(2**31 - 1), exact and vectorized.

A 32-byte secret is cut into 24-bit chunks (each below the prime) and every chunk is shared
with its own random polynomial of degree t - 1, so the scheme stays perfectly hiding chunk by
chunk. The field is small enough that a product of two elements fits in 62 bits, which lets
numpy evaluate all polynomials at all points at once (Horner over t steps) and reconstruct
many secrets with one set of Lagrange coefficients, all in exact int64 arithmetic.

Shares beyond t are not wasted: :func:`consistent` checks that all of them lie on one
polynomial of degree below t (a Reed-Solomon parity check), and :func:`recover` finds t honest
shares among corrupted ones when the caller can recognise the right secret (a commitment).
"""

from __future__ import annotations

from collections.abc import Callable
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


def _row_products(matrix: np.ndarray) -> np.ndarray:
    """The product of each row modulo p, by halving the columns (log2 of the width numpy steps)."""
    acc = matrix
    while acc.shape[1] > 1:
        if acc.shape[1] % 2:
            acc = np.concatenate([acc, np.ones((acc.shape[0], 1), dtype=np.int64)], axis=1)
        half = acc.shape[1] // 2
        acc = acc[:, :half] * acc[:, half:] % PRIME
    return acc[:, 0]


def _inverses(values: np.ndarray) -> np.ndarray:
    # Montgomery's batch inversion: one modular exponentiation for all values instead of one each.
    vals = [int(v) for v in values]
    prefix, acc = [], 1
    for v in vals:
        acc = acc * v % PRIME
        prefix.append(acc)
    inv = pow(acc, PRIME - 2, PRIME)
    out = [0] * len(vals)
    for i in range(len(vals) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % PRIME
        inv = inv * vals[i] % PRIME
    if vals:
        out[0] = inv
    return np.array(out, dtype=np.int64)


def _differences(x: np.ndarray) -> np.ndarray:
    # Row h holds (x_h - x_k) mod p for every k, with 1 on the diagonal (left out of products).
    diff = (x[:, None] - x[None, :]) % PRIME
    np.fill_diagonal(diff, 1)
    return diff


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> np.ndarray:
    # lambda_j = prod_{k != j} x_k / (x_k - x_j)
    x = np.array(xs, dtype=np.int64)
    others = np.tile(x, (len(x), 1))
    np.fill_diagonal(others, 1)
    num = _row_products(others)
    den = _row_products(_differences(x).T)  # row j of the transpose: (x_k - x_j), diagonal 1
    return num * _inverses(den) % PRIME


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


@lru_cache(maxsize=64)
def _dual_weights(xs: tuple[int, ...]) -> np.ndarray:
    # w_h = 1 / prod_{k != h} (x_h - x_k): the weights of the dual (parity-check) code.
    den = _row_products(_differences(np.array(xs, dtype=np.int64)))
    if np.any(den == 0):
        raise SecAggError("Shamir points must be distinct")
    return _inverses(den)


def consistent(xs: np.ndarray | list[int], ys: np.ndarray, threshold: int, rng: RandomSource | None = None) -> bool:
    """True when all shares lie on one polynomial of degree below ``threshold`` (per secret chunk).

    Uses the parity check of the Reed-Solomon code: values at distinct points ``x_h`` come from a
    polynomial of degree < t exactly when ``sum_h w_h x_h**j y_h = 0`` for j = 0 .. m - t - 1,
    with ``w_h = 1 / prod_{k != h}(x_h - x_k)``. All chunks and secrets are first folded into one
    value per holder with random coefficients (a wrong share survives the fold with probability
    1/p), so the check costs O(m (m - t)) whatever the number of secrets.

    Args:
        xs: The m distinct points.
        ys: Shares, shape ``(m, ...)``.
        threshold: t.
        rng: Draws the folding coefficients (``None``: the OS).
    """
    key = tuple(int(v) for v in xs)
    m = len(key)
    if m <= threshold:
        return True
    if len(set(key)) != m or any(v <= 0 or v >= PRIME for v in key):
        raise SecAggError("Shamir points must be distinct and in [1, p)")
    ys = np.asarray(ys, dtype=np.int64).reshape(m, -1)
    if ys.shape[1] == 1:
        folded = ys[:, 0] % PRIME
    else:
        coeffs = (rng or RandomSource(None)).uniform_mod(PRIME, (ys.shape[1],))
        # Each product is below 2**62 and reduced before the sum, so int64 never overflows.
        folded = (ys * coeffs % PRIME).sum(axis=1) % PRIME
    x = np.array(key, dtype=np.int64)
    v = _dual_weights(key) * folded % PRIME
    for _ in range(m - threshold):
        if int(v.sum()) % PRIME:
            return False
        v = v * x % PRIME
    return True


def recover(xs: list[int], ys: np.ndarray, threshold: int, accept: Callable[[np.ndarray], bool],
            rng: RandomSource, tries: int = 256) -> tuple[np.ndarray, list[int]]:
    """Finds the secret despite corrupted shares, and which shares are corrupted.

    Tries t-subsets (first every subset of the first t + 1 shares that leaves one out, then
    random ones) until one reconstructs a secret that ``accept`` recognises (a commitment or a
    public key check); t shares that reconstruct the committed secret define the true polynomial,
    and every share off it is corrupted.

    Args:
        xs: The holders' points (distinct).
        ys: Their shares, shape ``(m, chunks)``.
        threshold: t.
        accept: Recognises the right secret from its field chunks.
        rng: Draws the random subsets.
        tries: Random subsets to try after the leave-one-out ones.

    Returns:
        The secret's chunks and the indices (into ``xs``) of the corrupted shares.

    Raises:
        SecAggError: No subset tried reconstructs an accepted secret.
    """
    m = len(xs)
    ys = np.asarray(ys, dtype=np.int64)
    if m < threshold:
        raise SecAggError(f"Shamir needs {threshold} shares, only {m} available")
    candidates: list[list[int]] = [list(range(threshold))]
    if m > threshold:
        candidates += [[i for i in range(threshold + 1) if i != skip] for skip in range(threshold + 1)]
        picker = np.random.default_rng(int.from_bytes(rng.bytes(8), "little"))
        candidates += [sorted(picker.choice(m, size=threshold, replace=False).tolist()) for _ in range(tries)]
    for subset in candidates:
        secret = reconstruct([xs[i] for i in subset], ys[subset], threshold)
        if not accept(secret):
            continue
        bad = []
        for h in range(m):
            if h in subset:
                continue
            idx = [*subset, h]
            if not consistent([xs[i] for i in idx], ys[idx], threshold):
                bad.append(h)
        return secret, bad
    raise SecAggError("the shares are inconsistent and no t of them reconstruct the committed secret")
