"""Continuous batching: requests join the running batch as soon as the cache has room.

Each step runs one forward pass over a ragged batch: newly admitted requests bring their
whole prompt (prefill), running ones one token (decode). A finished request leaves at once
and frees its cache. How many requests run together is set by the cache: a contiguous cache
takes one max-length row per request, a paged cache only the blocks of the request's own
length, so on the same memory the paged cache runs more requests per step (vLLM's point).

Admission is conservative: a request is admitted only when the blocks (or rows) of its
*final* length fit beside what the running requests will grow to, so a step never runs out
of memory and nothing has to be preempted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from capabilities.inference.contiguous_kv import ContiguousKVCache
from capabilities.inference.paged_kv import OutOfBlocks, PagedKVCache
from capabilities.inference.tiny_decoder import TinyDecoder


@dataclass(frozen=True)
class Request:
    """One generation request: a non-empty prompt and how many tokens to add (>= 1)."""

    prompt: tuple[int, ...]
    max_new_tokens: int


@dataclass
class ServeStats:
    """What a :func:`serve` run did.

    Attributes:
        outputs: Generated tokens per request, in request order.
        steps: Forward passes.
        batch_sizes: Requests in each step.
    """

    outputs: list[list[int]]
    steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def mean_batch(self) -> float:
        return sum(self.batch_sizes) / max(1, len(self.batch_sizes))


def _cost(cache: PagedKVCache | ContiguousKVCache, total_len: int) -> tuple[int, int]:
    """(units this request holds at its final length, units the cache has)."""
    if isinstance(cache, PagedKVCache):
        return -(-total_len // cache.block_size), cache.allocator.num_blocks
    if total_len > cache.max_seq_len:
        raise ValueError(f"a request of {total_len} tokens exceeds the cache's max_seq_len {cache.max_seq_len}")
    return 1, cache.k.shape[1]


def serve(model: TinyDecoder, cache: PagedKVCache | ContiguousKVCache, requests: Sequence[Request]) -> ServeStats:
    """Greedy generation for ``requests`` (in arrival order) with continuous batching.

    Args:
        model: The decoder.
        cache: An empty paged or contiguous cache; its size limits the batch.
        requests: The requests; each must fit the cache on its own.

    Returns:
        The outputs (equal to generating each request alone) and per-step batch sizes.

    Raises:
        ValueError: A request that is empty, asks for no tokens, or can never fit the cache.
    """
    for i, r in enumerate(requests):
        if len(r.prompt) == 0 or r.max_new_tokens < 1:
            raise ValueError(f"requests[{i}] needs a non-empty prompt and max_new_tokens >= 1, got {r}")
        total = len(r.prompt) + r.max_new_tokens
        if total > model.cfg.max_seq_len:
            raise ValueError(f"requests[{i}]: {total} tokens exceed the model's max_seq_len {model.cfg.max_seq_len}")
        need, have = _cost(cache, total)
        if need > have:
            raise ValueError(f"requests[{i}] needs {need} cache units at full length; the cache has {have}")
    stats = ServeStats(outputs=[[] for _ in requests])
    waiting = deque(range(len(requests)))
    running: list[int] = []
    committed = 0
    try:
        while waiting or running:
            admitted = []
            while waiting:
                need, have = _cost(cache, len(requests[waiting[0]].prompt) + requests[waiting[0]].max_new_tokens)
                if committed + need > have:
                    break
                i = waiting.popleft()
                cache.add_sequence(i)
                committed += need
                admitted.append(i)
            batch = running + admitted
            new = [1] * len(running) + [len(requests[i].prompt) for i in admitted]
            plan = cache.reserve(batch, new)
            tokens = torch.zeros((len(batch), max(new)), dtype=torch.long)
            for row, i in enumerate(batch):
                step_tokens = [stats.outputs[i][-1]] if i in running else list(requests[i].prompt)
                tokens[row, : len(step_tokens)] = torch.tensor(step_tokens)
            logits = model(tokens, plan, cache)
            nxt = logits[torch.arange(len(batch)), torch.tensor(new) - 1].argmax(-1).tolist()
            stats.steps += 1
            stats.batch_sizes.append(len(batch))
            running = []
            for i, t in zip(batch, nxt, strict=True):
                stats.outputs[i].append(t)
                if len(stats.outputs[i]) < requests[i].max_new_tokens:
                    running.append(i)
                else:
                    cache.free(i)
                    committed -= _cost(cache, len(requests[i].prompt) + requests[i].max_new_tokens)[0]
    except OutOfBlocks:
        raise RuntimeError("admission let the cache run out of memory; this is a bug in serve") from None
    finally:
        for i in list(cache.lengths):
            cache.free(i)
    return stats
