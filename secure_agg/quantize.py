"""Fixed-point quantization of float vectors so that n of them sum without wrapping mod 2**bits.

Each entry is clipped to [-clip, clip], shifted to [0, 2 * clip] and scaled to an integer in
[0, per_client_max] with per_client_max = floor((2**bits - 1) / n): n such integers sum to at
most 2**bits - 1, so the masked sum modulo 2**bits equals the true integer sum. Rounding to
the nearest integer costs at most 1 / (2 * scale) per client and entry, so a sum of m clients'
entries is exact within m / (2 * scale) (for inputs inside the clipping range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secure_agg.errors import SecAggError
from secure_agg.prg import word_dtype


@dataclass(frozen=True)
class Quantization:
    """How floats become integers modulo 2**bits.

    Args:
        clip: Entries are clipped to [-clip, clip] (must be > 0).
        bits: The modulus is 2**bits (1 to 64; 32 by default).
        scale: Integers per unit; ``None`` picks the largest scale that cannot wrap for the
            number of clients. A given scale that could wrap is an error.
    """

    clip: float
    bits: int = 32
    scale: float | None = None

    def for_clients(self, num_clients: int) -> Quantizer:
        """The quantizer for ``num_clients`` clients; raises SecAggError when the sum could wrap."""
        if not self.clip > 0 or not np.isfinite(self.clip):
            raise SecAggError(f"quantization clip must be a positive finite number, got {self.clip}")
        word_dtype(self.bits)
        if num_clients < 1:
            raise SecAggError(f"num_clients must be at least 1, got {num_clients}")
        per_client_max = ((1 << self.bits) - 1) // num_clients
        if per_client_max < 1:
            raise SecAggError(f"2**{self.bits} is too small for {num_clients} clients: the sum would wrap; use more bits")
        largest = per_client_max / (2 * self.clip)
        scale = largest if self.scale is None else float(self.scale)
        if scale <= 0:
            raise SecAggError(f"quantization scale must be positive, got {scale}")
        if round(2 * self.clip * scale) > per_client_max:
            raise SecAggError(
                f"quantization scale {scale} with clip {self.clip} lets the sum of {num_clients} clients wrap modulo "
                f"2**{self.bits}; the largest safe scale is {largest:.6g} (or raise bits)")
        return Quantizer(self.clip, self.bits, scale, num_clients)


@dataclass(frozen=True)
class Quantizer:
    """A resolved quantization for a known number of clients (see :class:`Quantization`)."""

    clip: float
    bits: int
    scale: float
    num_clients: int

    def quantize(self, vector: np.ndarray) -> np.ndarray:
        """Clips, shifts and rounds a float vector to words in [0, per-client maximum]."""
        x = np.asarray(vector)
        if x.dtype.kind not in "fiu":
            raise SecAggError(f"cannot quantize a vector of dtype {x.dtype}: it must hold real numbers")
        # A NaN or an infinity makes the sum non-finite; only then (or when finite entries
        # overflow the sum) is every entry checked. Saves a pass over the whole model.
        if not np.isfinite(np.sum(x, dtype=np.float64)) and not np.isfinite(x).all():
            raise SecAggError("cannot quantize a vector with NaN or infinite entries")
        # One float64 scratch vector, updated in place: this runs on every client's full model
        # each round.
        q = np.empty(x.shape, dtype=np.float64)
        np.clip(x, -self.clip, self.clip, out=q)
        q += self.clip
        q *= self.scale
        np.rint(q, out=q)
        return q.astype(word_dtype(self.bits))

    def dequantize(self, total: np.ndarray, count: int) -> np.ndarray:
        """Turns the integer sum of ``count`` quantized vectors back into a float sum."""
        return np.asarray(total, dtype=np.float64) / self.scale - count * self.clip

    def error_bound(self, count: int) -> float:
        """Largest possible |dequantized sum - sum of clipped inputs| per entry for ``count`` clients."""
        return count / (2 * self.scale)
