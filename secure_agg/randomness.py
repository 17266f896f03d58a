"""Where every secret of the protocol comes from: the OS, or a seeded cryptographic stream.

Keys, self-mask seeds and Shamir coefficients must be unpredictable in a real deployment
(``seed=None`` reads ``os.urandom``). Tests and experiments need the same run twice, so a seed
turns the source into AES-256-CTR keyed by SHA-256 of the seed: still a cryptographic
generator, just a reproducible one. Each source owns its stream; nothing is global.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class RandomSource:
    """A stream of random bytes, from the OS or from a seed.

    Args:
        seed: ``None`` for ``os.urandom``; an int, str or bytes for a reproducible stream.
        label: Separates streams derived from the same seed (for example one per client).
    """

    def __init__(self, seed: int | str | bytes | None = None, label: str = "") -> None:
        self.seeded = seed is not None
        self._encryptor = None
        if seed is not None:
            material = seed if isinstance(seed, bytes) else str(seed).encode()
            key = hashlib.sha256(b"agora-secagg-rng|" + label.encode() + b"|" + material).digest()
            self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def bytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        if self._encryptor is None:
            return os.urandom(n)
        return self._encryptor.update(bytes(n))

    def uniform_mod(self, modulus: int, shape: tuple[int, ...]) -> np.ndarray:
        """Integers uniform in ``[0, modulus)`` as int64 (``modulus`` below 2**62).

        Reduces 64 random bits modulo ``modulus``; the bias is at most modulus / 2**64
        (about 1e-10 for the Shamir field), far below anything a test or attacker can see.
        """
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        raw = np.frombuffer(self.bytes(8 * count), dtype=np.uint64)
        return (raw % np.uint64(modulus)).astype(np.int64).reshape(shape)

    def child(self, label: str) -> RandomSource:
        """An independent source for a sub-component (seeded from this stream when seeded)."""
        if not self.seeded:
            return RandomSource(None)
        return RandomSource(self.bytes(32), label=label)
