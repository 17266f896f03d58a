"""The pseudo-random generator that turns a 32-byte seed into a mask vector modulo 2**bits.

AES-128 in counter mode over a zero buffer is the keystream (keyed by the first 16 bytes of
the 32-byte seed, which HKDF makes uniform; 128-bit keys as in Bonawitz et al.'s own
implementation, and 20 % faster than AES-256 on the server's hot path); its bytes are read directly as
unsigned integers (uint32 for ``bits <= 32``, uint64 above) and the top bits are cleared, which
keeps the entries exactly uniform modulo 2**bits. Each seed is used as an AES key exactly once
per purpose, so the fixed counter start is safe.

The counter starts at the block ``0^96 || 2``: the block at which AES-GCM with an all-zero
96-bit nonce starts encrypting, so the keystream is also what OpenSSL's GCM encryptor writes
over zeros (its tag is never computed or used). Where the processor has vector AES (VAES with
AVX-512), OpenSSL's GCM code produces it about 40 % faster than its CTR code (0.24 against
0.41 ms per 4 MB on the 2-core test machine), so :func:`keystream` takes whichever of the two
measured faster on first use; both give the same bytes. The streams are at most
``MAX_STREAM_BYTES`` long, so GCM's 32-bit block counter never wraps.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_agg.errors import SecAggError

# The keystream's first counter block (see the module docstring) and the longest stream: GCM
# counts blocks in the last 32 bits of the counter block, CTR in all 128; they agree up to here.
_NONCE = bytes(12)
_FIRST_BLOCK = 2
MAX_STREAM_BYTES = 16 * (2**32 - _FIRST_BLOCK)
# "gcm" or "ctr" forces the encryptor used from block 0 (tests check both); None: measured once.
KEYSTREAM_MODE: str | None = None


@functools.cache
def _gcm_is_faster() -> bool:
    zeros, out, key = bytes(1 << 20), bytearray((1 << 20) + 15), bytes(16)
    best = {}
    for mode in ("ctr", "gcm", "ctr", "gcm", "ctr", "gcm"):
        start = time.perf_counter()
        _encryptor(key, 0, mode).update_into(zeros, out)
        best[mode] = min(best.get(mode, math.inf), time.perf_counter() - start)
    return best["gcm"] < best["ctr"]


def _encryptor(key: bytes, block: int, mode: str) -> Any:
    if mode == "gcm":
        return Cipher(algorithms.AES(key), modes.GCM(_NONCE)).encryptor()
    return Cipher(algorithms.AES(key), modes.CTR((_FIRST_BLOCK + block).to_bytes(16, "big"))).encryptor()


def keystream(seed: bytes, block: int = 0) -> Any:
    """An encryptor whose ``update_into`` over zeros writes the keystream of ``seed`` from 16-byte block ``block``.

    From block 0 the GCM encryptor where it is the faster one (see the module docstring),
    otherwise CTR started at that block; the bytes are the same.
    """
    key = seed[:16]
    if block == 0 and (KEYSTREAM_MODE == "gcm" or (KEYSTREAM_MODE is None and _gcm_is_faster())):
        return _encryptor(key, 0, "gcm")
    return _encryptor(key, block, "ctr")


# Words per chunk of add_many: 32k words (128 kB at uint32) keep the keystream and the
# accumulator's slice in L2 between the AES write and the add, which made the eleven mask
# streams of a SecAgg+ client at 1M words about twice as fast as whole-vector streams.
CHUNK_WORDS = 1 << 15


def word_dtype(bits: int) -> np.dtype:
    """The unsigned dtype whose wrap-around arithmetic carries values modulo 2**bits."""
    if not 1 <= bits <= 64:
        raise SecAggError(f"bits must be between 1 and 64, got {bits}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def reduce_mod(vector: np.ndarray, bits: int) -> np.ndarray:
    """Reduces a vector of words modulo 2**bits in place (a no-op for 32 and 64) and returns it."""
    width = vector.dtype.itemsize * 8
    if bits < width:
        vector &= vector.dtype.type((1 << bits) - 1)
    return vector


class MaskGenerator:
    """Expands seeds into mask vectors of a fixed length; reuses its buffers between calls.

    Args:
        length: Entries per vector.
        bits: The modulus is 2**bits.
    """

    def __init__(self, length: int, bits: int) -> None:
        if length <= 0:
            raise SecAggError(f"vector length must be positive, got {length}")
        self.length = length
        self.bits = bits
        self.dtype = word_dtype(bits)
        if length * self.dtype.itemsize > MAX_STREAM_BYTES:
            raise SecAggError(f"vector length {length} is too long for one keystream: at most "
                              f"{MAX_STREAM_BYTES // self.dtype.itemsize} words of {bits} bits")
        # Whole-vector buffers of mask/add, made on first use: add_many needs only a chunk.
        self._zeros = b""
        self._buffer = bytearray()
        self._view = np.zeros(0, dtype=self.dtype)

    def _expand(self, seed: bytes) -> np.ndarray:
        if len(seed) != 32:
            raise SecAggError(f"a PRG seed must be 32 bytes, got {len(seed)}")
        if not self._zeros:
            nbytes = self.length * self.dtype.itemsize
            self._zeros = bytes(nbytes)
            self._buffer = bytearray(nbytes + 15)  # update_into needs room for one extra block
            self._view = np.frombuffer(self._buffer, dtype=self.dtype, count=self.length)
        keystream(seed).update_into(self._zeros, self._buffer)
        return self._view

    def mask(self, seed: bytes) -> np.ndarray:
        """A fresh vector of ``length`` words uniform modulo 2**bits."""
        return reduce_mod(self._expand(seed).copy(), self.bits)

    def add(self, accumulator: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """Adds (``sign=1``) or subtracts (``sign=-1``) PRG(seed) into ``accumulator`` modulo 2**width.

        The caller reduces modulo 2**bits once at the end; wrap-around in the word width
        commutes with that reduction, so the unreduced keystream can be added directly.
        """
        stream = self._expand(seed)
        if sign >= 0:
            np.add(accumulator, stream, out=accumulator)
        else:
            np.subtract(accumulator, stream, out=accumulator)

    def add_many(self, accumulator: np.ndarray, seeds: Sequence[tuple[bytes, int]], workers: int = 1,
                 vectors: Sequence[np.ndarray] = (), overwrite: bool = False) -> None:
        """Adds ``sign * PRG(seed)`` for every ``(seed, sign)``, and every one of ``vectors``, into ``accumulator``.

        Sums are modulo 2**width (the caller reduces modulo 2**bits once at the end). With
        ``overwrite`` the accumulator's old content is ignored: it receives exactly the sum
        (a client's masked input ``x + masks`` from an uninitialized buffer, without a separate
        pass to copy ``x`` into it first: each chunk of ``x`` is copied while it is in cache).

        The same sum as calling :meth:`add` once per seed, computed chunk by chunk: for each
        slice of :data:`CHUNK_WORDS` words every stream is generated into a small buffer and
        added while both are still in cache. With ``workers > 1`` contiguous ranges of the
        vector run on threads; each range starts its counter at its own block offset, so the
        keystream is the same. Only NumPy's adds release the GIL (``cryptography`` 50's AES
        holds it), so threads gain little: 50 streams of 1M words took 30 ms on 2 threads
        against 34 ms on one, measured on the idle 2-core machine.
        """
        if accumulator.shape != (self.length,) or accumulator.dtype != self.dtype:
            raise SecAggError(f"the accumulator must be {self.length} words of {self.dtype}, "
                              f"got {accumulator.shape} of {accumulator.dtype}")
        for seed, _ in seeds:
            if len(seed) != 32:
                raise SecAggError(f"a PRG seed must be 32 bytes, got {len(seed)}")
        for vector in vectors:
            if vector.shape != (self.length,) or vector.dtype != self.dtype:
                raise SecAggError(f"every added vector must be {self.length} words of {self.dtype}, "
                                  f"got {vector.shape} of {vector.dtype}")
        if not seeds and not vectors:
            if overwrite:
                accumulator.fill(0)
            return
        chunks = -(-self.length // CHUNK_WORDS)
        workers = max(1, min(int(workers), chunks))
        # Range boundaries on whole chunks, so that every range starts on a 16-byte AES block.
        bounds = [(chunks * i // workers) * CHUNK_WORDS for i in range(workers + 1)]
        bounds[-1] = self.length
        ranges = [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
        if len(ranges) == 1:
            self._add_range(accumulator, seeds, vectors, overwrite, *ranges[0])
            return
        with ThreadPoolExecutor(len(ranges)) as pool:
            for future in [pool.submit(self._add_range, accumulator, seeds, vectors, overwrite, lo, hi) for lo, hi in ranges]:
                future.result()

    def _add_range(self, accumulator: np.ndarray, seeds: Sequence[tuple[bytes, int]], vectors: Sequence[np.ndarray],
                   overwrite: bool, lo: int, hi: int) -> None:
        itemsize = self.dtype.itemsize
        encryptors = [(keystream(seed, lo * itemsize // 16), sign) for seed, sign in seeds]
        step = min(CHUNK_WORDS, hi - lo)
        zeros = bytes(step * itemsize)
        buffer = bytearray(step * itemsize + 15)  # update_into needs room for one extra block
        words = np.frombuffer(buffer, dtype=self.dtype, count=step)
        # With overwrite, each chunk starts as the first vector's chunk (or zero) instead of
        # the accumulator's old words; the other vectors are added as usual.
        first, rest = (vectors[0], vectors[1:]) if overwrite and vectors else (None, vectors)
        for start in range(lo, hi, step):
            n = min(step, hi - start)
            target = accumulator[start:start + n]
            stream = words[:n]
            if first is not None:
                np.copyto(target, first[start:start + n])
            elif overwrite:
                target.fill(0)
            for vector in rest:
                np.add(target, vector[start:start + n], out=target)
            for encryptor, sign in encryptors:
                encryptor.update_into(zeros if n == step else zeros[: n * itemsize], buffer)
                if sign >= 0:
                    np.add(target, stream, out=target)
                else:
                    np.subtract(target, stream, out=target)
