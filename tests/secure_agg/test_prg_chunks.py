"""MaskGenerator.add_many (chunked, optionally threaded) against the whole AES-CTR keystream.

The reference is Python-int arithmetic on the keystream that ``cryptography``'s AES-CTR
produces in one call from its first counter block (0^96 || 2); the chunk boundaries, the
per-range counter offsets, the thread split and the encryptor (GCM's or CTR's) must not change
a single word.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_agg import SecAggError, prg
from secure_agg.prg import CHUNK_WORDS, MaskGenerator, reduce_mod


def _reference(start: np.ndarray, seeds: list[tuple[bytes, int]], bits: int,
               vectors: tuple[np.ndarray, ...] = ()) -> list[int]:
    width = start.dtype.itemsize * 8
    total = [int(v) for v in start]
    for vector in vectors:
        total = [(a + int(b)) % (1 << width) for a, b in zip(total, vector, strict=True)]
    for seed, sign in seeds:
        raw = Cipher(algorithms.AES(seed[:16]), modes.CTR((2).to_bytes(16, "big"))).encryptor().update(bytes(start.nbytes))
        stream = np.frombuffer(raw, dtype=start.dtype).tolist()
        total = [(a + sign * s) % (1 << width) for a, s in zip(total, stream, strict=True)]
    return [a % (1 << bits) for a in total]


# Lengths around the chunk size: below, exactly, one word over, and several chunks plus a tail.
@pytest.mark.parametrize("length", [7, CHUNK_WORDS, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 12_345])
@pytest.mark.parametrize("bits", [20, 32, 64])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("mode", ["gcm", "ctr"])
def test_add_many_is_the_sum_of_the_keystreams(length: int, bits: int, workers: int, mode: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prg, "KEYSTREAM_MODE", mode)  # the encryptor of each range's first block
    rng = np.random.default_rng(length + bits)
    gen = MaskGenerator(length, bits)
    start = rng.integers(0, 1 << min(bits, 63), size=length, dtype=np.uint64).astype(gen.dtype)
    seeds = [(rng.bytes(32), 1), (rng.bytes(32), -1), (rng.bytes(32), 1), (rng.bytes(32), -1), (rng.bytes(32), -1)]
    acc = start.copy()
    gen.add_many(acc, seeds, workers=workers)
    reduce_mod(acc, bits)
    assert acc.tolist() == _reference(start, seeds, bits)
    # The server's form: masked vectors summed in the same pass.
    vectors = tuple(rng.integers(0, 1 << min(bits, 63), size=length, dtype=np.uint64).astype(gen.dtype)
                    for _ in range(2))
    acc = start.copy()
    gen.add_many(acc, seeds[:2], workers=workers, vectors=vectors)
    reduce_mod(acc, bits)
    assert acc.tolist() == _reference(start, seeds[:2], bits, vectors)
    # The client's form: overwrite ignores whatever the buffer held (here: the largest word)
    # and writes vectors[0] + the rest, exactly as if the buffer had been zero.
    zero = np.zeros(length, dtype=gen.dtype)
    for vs in (vectors, ()):
        acc = np.full(length, np.iinfo(gen.dtype).max, dtype=gen.dtype)
        gen.add_many(acc, seeds[1:3], workers=workers, vectors=vs, overwrite=True)
        reduce_mod(acc, bits)
        assert acc.tolist() == _reference(zero, seeds[1:3], bits, vs)


def test_add_many_matches_one_add_per_seed_and_cancels() -> None:
    gen = MaskGenerator(100_003, 32)
    seeds = [(bytes([i]) * 32, 1 if i % 3 else -1) for i in range(11)]
    one_by_one = np.arange(100_003, dtype=np.uint32)
    for seed, sign in seeds:
        gen.add(one_by_one, seed, sign)
    many = np.arange(100_003, dtype=np.uint32)
    gen.add_many(many, seeds, workers=2)
    assert np.array_equal(many, one_by_one)
    gen.add_many(many, [(seed, -sign) for seed, sign in seeds])
    assert np.array_equal(many, np.arange(100_003, dtype=np.uint32))


def test_add_many_overwrite_without_streams_is_the_vector_sum_or_zero() -> None:
    gen = MaskGenerator(5, 32)
    acc = np.full(5, 7, dtype=np.uint32)
    gen.add_many(acc, [], overwrite=True)
    assert acc.tolist() == [0] * 5
    a, b = np.arange(5, dtype=np.uint32), np.full(5, 2**32 - 1, dtype=np.uint32)
    gen.add_many(acc, [], vectors=[a, b], overwrite=True)
    assert acc.tolist() == [(i + 2**32 - 1) % 2**32 for i in range(5)]
    assert a.tolist() == list(range(5))  # the vectors are read, never written


def test_add_many_refuses_bad_arguments() -> None:
    gen = MaskGenerator(10, 32)
    with pytest.raises(SecAggError, match="accumulator must be 10 words of uint32"):
        gen.add_many(np.zeros(9, dtype=np.uint32), [(bytes(32), 1)])
    with pytest.raises(SecAggError, match="accumulator must be 10 words of uint32"):
        gen.add_many(np.zeros(10, dtype=np.uint64), [(bytes(32), 1)])
    with pytest.raises(SecAggError, match="every added vector must be 10 words of uint32"):
        gen.add_many(np.zeros(10, dtype=np.uint32), [], vectors=[np.zeros(11, dtype=np.uint32)])
    with pytest.raises(SecAggError, match="seed must be 32 bytes, got 16"):
        gen.add_many(np.zeros(10, dtype=np.uint32), [(bytes(16), 1)])
