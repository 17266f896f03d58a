"""Fixed-point quantization of float vectors so that n of them sum without wrapping mod 2**bits.

Each entry is clipped to [-clip, clip], scaled and rounded to an integer q in [-offset,
offset] (``offset = round(clip * scale)``), then shifted by the integer ``offset`` to a word in
[0, 2 * offset] with ``2 * offset <= per_client_max = floor((2**bits - 1) / n)``: n such words
sum to at most 2**bits - 1, so the masked sum modulo 2**bits equals the true integer sum.
Rounding to the nearest integer costs at most 1 / (2 * scale) per client and entry, so a sum
of m clients' entries is exact within m / (2 * scale) (for inputs inside the clipping range).

The default scale is the largest *power of two* that cannot wrap. Then ``x * scale`` is an
integer, exactly, for every float whose lowest mantissa bit is at least ``1 / scale`` (with
bits=64 and clip=8 for 2 clients: every float32 of magnitude >= 2**-35); the shift is done in
integer arithmetic (a float ``x + clip`` would drop the low bits of a small ``x``); and
decoding subtracts the shifts from the integer sum before one exact division by the scale. So
for such inputs the decoded sum is the float64 sum of the inputs, rounded once (exactly the
integer sum while it needs at most 53 bits).
"""

from __future__ import annotations

import math
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
        scale: Integers per unit; ``None`` picks the largest power of two that cannot wrap
            for the number of clients. A given scale that could wrap is an error.
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
        if per_client_max < 2:
            raise SecAggError(f"2**{self.bits} is too small for {num_clients} clients: the sum would wrap; use more bits")
        if self.scale is None:
            # The largest power of two whose words cannot wrap (the float estimate may be one
            # power too high; 2 * round(clip * scale) is the widest word).
            scale = math.ldexp(1.0, math.floor(math.log2(per_client_max / (2 * self.clip))) + 1)
            while 2 * round(self.clip * scale) > per_client_max:
                scale /= 2
        else:
            scale = float(self.scale)
        if not scale > 0 or not math.isfinite(scale):
            raise SecAggError(f"quantization scale must be a positive finite number, got {scale}")
        if 2 * round(self.clip * scale) > per_client_max:
            raise SecAggError(
                f"quantization scale {scale} with clip {self.clip} lets the sum of {num_clients} clients wrap modulo "
                f"2**{self.bits}; the largest safe scale is about {per_client_max / (2 * self.clip):.6g} (or raise bits)")
        return Quantizer(self.clip, self.bits, scale, num_clients)


@dataclass(frozen=True)
class Quantizer:
    """A resolved quantization for a known number of clients (see :class:`Quantization`)."""

    clip: float
    bits: int
    scale: float
    num_clients: int

    @property
    def offset(self) -> int:
        """The integer shift that makes every rounded entry non-negative: ``round(clip * scale)``."""
        return round(self.clip * self.scale)

    def quantize(self, vector: np.ndarray) -> np.ndarray:
        """Clips, scales and rounds a float vector, then shifts it to words in [0, 2 * offset]."""
        x = np.asarray(vector)
        if x.dtype.kind not in "fiu":
            raise SecAggError(f"cannot quantize a vector of dtype {x.dtype}: it must hold real numbers")
        # A NaN or an infinity makes the sum non-finite; only then (or when finite entries
        # overflow the sum) is every entry checked. Saves a pass over the whole model.
        if not np.isfinite(np.sum(x, dtype=np.float64)) and not np.isfinite(x).all():
            raise SecAggError("cannot quantize a vector with NaN or infinite entries")
        return quantize_into(x, 1.0, self, np.empty(x.shape, dtype=word_dtype(self.bits)))

    def dequantize(self, total: np.ndarray, count: int, divisor: float = 1.0) -> np.ndarray:
        """Turns the integer sum of ``count`` quantized vectors back into a float sum (over ``divisor``).

        ``total`` holds the words' sum (any unsigned or signed integer dtype; the true sum is
        below 2**bits, so no reduction is lost). The shifts come off in integer arithmetic
        (modulo the word size, so a 64-bit sum keeps every bit); the integer, converted to
        float64 (exactly while it needs at most 53 bits), is divided once by ``scale *
        divisor``. Block by block, so only the float64 result is allocated.
        """
        t = np.asarray(total).reshape(-1)
        if t.dtype.kind not in "ui":
            raise SecAggError(f"a quantized sum holds integer words, got dtype {t.dtype}")
        shift = count * self.offset
        denominator = self.scale * divisor
        out = np.empty(t.size, dtype=np.float64)
        scratch = np.empty(min(t.size, 1 << 15) or 1, dtype=np.int64)
        for lo in range(0, t.size, scratch.size):
            part = t[lo:lo + scratch.size]
            ints = scratch[:part.size]
            if t.dtype == np.uint64:
                np.subtract(part, np.uint64(shift % (1 << 64)), out=ints.view(np.uint64))  # wraps: the signed sum
            else:
                ints[:] = part
                ints -= shift
            np.divide(ints, denominator, out=out[lo:lo + part.size])
        return out.reshape(np.shape(total))

    def error_bound(self, count: int) -> float:
        """Largest possible |dequantized sum - sum of clipped inputs| per entry for ``count`` clients.

        Half a step per client; plus one float64 rounding of the sum where the integer sum may
        need more than 53 bits or the scale is not a power of two.
        """
        bound = count / (2 * self.scale)
        if count * self.offset > 2**53 or math.frexp(self.scale)[0] != 0.5:
            bound += count * self.clip * 2.0**-52
        return bound


def quantize_into(values: np.ndarray, weight: float, quantizer: Quantizer, out: np.ndarray,
                  scratch: np.ndarray | None = None, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Writes the words of ``weight * values`` into ``out`` (same size), block by block.

    Each block of 32k entries is weighted and scaled (one float64 product), clipped, rounded
    to the nearest integer, converted to signed integers in ``out``'s own memory and shifted
    by the integer offset in place (modulo the word size), while it sits in cache. This runs
    on every client's full model each round.

    Args:
        values: The entries (any real dtype; read as a flat vector).
        weight: Multiplies every entry before clipping (a client's ``n_k / max_weight``).
        quantizer: The quantization (clip, scale, offset, word size).
        out: Destination words (``word_dtype(bits)``), as many as ``values``.
        scratch: A float64 work buffer; one of up to 32k entries is made when ``None``.
        value_range: ``(min, max)`` of ``values`` when the caller has them (a client checks
            them for NaN anyway). When they show that no weighted entry reaches the clip
            limit, the clip pass is skipped; it would not change a single entry (the extremes
            are weighted with the same float64 product as every block), so the words are the
            same. About a fifth of the cost at 1M entries.

    Returns:
        ``out``.
    """
    flat = np.asarray(values).reshape(-1)
    if not out.flags.c_contiguous:
        raise SecAggError("quantize_into writes into out's own memory: it must be C-contiguous")
    words = out.reshape(-1)
    if words.size != flat.size:
        raise SecAggError(f"quantize_into: {flat.size} values but {words.size} output words")
    if scratch is None:
        scratch = np.empty(min(flat.size, 1 << 15) or 1, dtype=np.float64)
    signed = words.view(np.int64 if words.dtype.itemsize == 8 else np.int32)
    factor, top, offset = weight * quantizer.scale, quantizer.clip * quantizer.scale, words.dtype.type(quantizer.offset)
    clip = True
    if value_range is not None and factor > 0:
        low, high = (np.float64(v) * np.float64(factor) for v in value_range)
        clip = not (-top <= low and high <= top)  # NaN compares False: clipped (and refused upstream)
    step = scratch.size
    for lo in range(0, flat.size, step):
        part = flat[lo:lo + step]
        buf = scratch[:part.size]
        np.multiply(part, factor, out=buf, dtype=np.float64)
        if clip:
            np.clip(buf, -top, top, out=buf)
        np.rint(buf, out=buf)  # an integer in [-offset, offset], exactly (float64 holds it)
        signed[lo:lo + part.size] = buf
        words[lo:lo + part.size] += offset  # wraps modulo the word size to q + offset >= 0
    return out
