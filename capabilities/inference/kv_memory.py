"""KV-cache memory on a realistic length distribution: paged blocks against max-length rows.

The lengths follow the two workloads of the vLLM paper (Kwon et al., 2023, Fig. 11): ShareGPT
conversations (mean prompt 161 tokens, mean output 338) and Alpaca instructions (mean prompt
19, mean output 58). We draw prompt and output lengths from log-normal distributions with
those means, clipped to the context length, and place every sequence in a real
:class:`PagedKVCache` (tiny heads: only the slot accounting matters here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from capabilities.inference.paged_kv import OutOfBlocks, PagedKVCache, _check_positive

# Mean (prompt, output) tokens of the vLLM paper's two traces.
WORKLOADS: dict[str, tuple[float, float]] = {"sharegpt": (161.3, 337.9), "alpaca": (19.3, 58.5)}


def sample_lengths(num: int, *, workload: Literal["sharegpt", "alpaca"] = "sharegpt", sigma: float = 0.8,
                   max_seq_len: int = 2048, seed: int = 0) -> np.ndarray:
    """Total (prompt + output) lengths of ``num`` requests, each in ``[2, max_seq_len]``.

    Args:
        num: Requests (>= 1).
        workload: "sharegpt" or "alpaca" (sets the mean prompt and output lengths).
        sigma: Log-space standard deviation of both log-normals (> 0). Default 0.8.
        max_seq_len: Context length; longer requests are clipped to it. Default 2048.
        seed: Seed of the generator. Default 0.
    """
    _check_positive("num", num)
    _check_positive("max_seq_len", max_seq_len)
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    rng = np.random.default_rng(seed)
    out = []
    for mean in WORKLOADS[workload]:
        # A log-normal with mean m has mu = ln(m) - sigma^2 / 2.
        out.append(np.maximum(1, np.rint(rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, num))))
    return np.minimum(out[0] + out[1], max_seq_len).astype(int)


@dataclass(frozen=True)
class MemoryReport:
    """Slots reserved against slots used by one batch of sequences.

    Attributes:
        tokens: Tokens the sequences hold.
        paged_slots: Slots of the blocks they occupy.
        contiguous_slots: ``len(lengths) * max_seq_len``.
    """

    tokens: int
    paged_slots: int
    contiguous_slots: int

    @property
    def paged_waste(self) -> float:
        return 1.0 - self.tokens / self.paged_slots

    @property
    def contiguous_waste(self) -> float:
        return 1.0 - self.tokens / self.contiguous_slots


def _tiny_cache(block_size: int, num_blocks: int) -> PagedKVCache:
    return PagedKVCache(num_layers=1, num_heads=1, head_dim=1, block_size=block_size, num_blocks=num_blocks)


def memory_report(lengths: np.ndarray, *, block_size: int, max_seq_len: int) -> MemoryReport:
    """Places every sequence in a paged cache and compares with max-length preallocation."""
    _check_positive("block_size", block_size)
    lengths = [int(n) for n in lengths]
    if max(lengths) > max_seq_len:
        raise ValueError(f"a length ({max(lengths)}) exceeds max_seq_len ({max_seq_len})")
    cache = _tiny_cache(block_size, sum(-(-n // block_size) for n in lengths))
    for seq, n in enumerate(lengths):
        cache.add_sequence(seq)
        cache.reserve([seq], [n])
    cache.check()
    return MemoryReport(cache.tokens_stored(), cache.slots_reserved(), len(lengths) * max_seq_len)


def sequences_in_budget(lengths: np.ndarray, *, budget_tokens: int, block_size: int,
                        max_seq_len: int) -> tuple[int, int]:
    """How many of ``lengths`` (in order) fit at once at full length in ``budget_tokens`` slots.

    Returns:
        ``(paged, contiguous)``: the paged cache admits sequences until its blocks run out;
        the contiguous cache fits ``budget_tokens // max_seq_len`` rows.
    """
    _check_positive("budget_tokens", budget_tokens)
    _check_positive("block_size", block_size)
    cache = _tiny_cache(block_size, max(1, budget_tokens // block_size))
    fitted = 0
    for seq, n in enumerate(lengths):
        cache.add_sequence(seq)
        try:
            cache.reserve([seq], [int(n)])
        except OutOfBlocks:
            cache.free(seq)
            break
        fitted += 1
    cache.check()
    return fitted, budget_tokens // max_seq_len


def prefix_sharing_blocks(prompt_len: int, num_samples: int, new_tokens: int, *, block_size: int) -> tuple[int, int]:
    """Blocks used by ``num_samples`` continuations of one prompt, with and without sharing.

    With sharing, the samples are forks of one prefilled sequence (copy-on-write on the
    partly filled last prompt block); without, each sample holds its own copy of the prompt.

    Returns:
        ``(shared, unshared)`` blocks in use after every sample has ``new_tokens`` more tokens.
    """
    for key, value in (("prompt_len", prompt_len), ("num_samples", num_samples), ("new_tokens", new_tokens)):
        _check_positive(key, value)
    per_seq = -(-(prompt_len + new_tokens) // block_size)
    shared = _tiny_cache(block_size, num_samples * per_seq)
    shared.add_sequence(0)
    shared.reserve([0], [prompt_len])
    for s in range(1, num_samples):
        shared.fork(0, s)
    shared.reserve(list(range(num_samples)), [new_tokens] * num_samples)
    shared.check()
    unshared = _tiny_cache(block_size, num_samples * per_seq)
    for s in range(num_samples):
        unshared.add_sequence(s)
    unshared.reserve(list(range(num_samples)), [prompt_len + new_tokens] * num_samples)
    return shared.allocator.num_used, unshared.allocator.num_used
