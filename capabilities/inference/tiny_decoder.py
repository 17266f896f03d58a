"""A tiny decoder-only transformer that generates through a KV cache (paged or contiguous).

Random weights from a seed, nothing downloaded. Pre-norm blocks (LayerNorm, multi-head causal
self-attention, GELU MLP) with learned absolute positions, as in GPT-2 / nanoGPT. The model
never touches keys and values itself: each layer hands its new ``k, v`` to the cache and asks
the cache for attention, so the same weights run on :class:`PagedKVCache` and
:class:`ContiguousKVCache` and must produce the same tokens.

:func:`generate` batches sequences of different lengths: one prefill step for all prompts
(right-padded), then decode steps that each add one token to every unfinished sequence; a
sequence that reaches its own ``max_new_tokens`` leaves the batch and frees its cache.
:class:`CachedGenerator` is generation through one cache as an agent's ``Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from capabilities.inference.paged_kv import PagedKVCache, StepPlan, _check_positive


class KVCache(Protocol):
    """What the decoder needs from a cache (``lengths``: tokens held per live sequence)."""

    lengths: dict[int, int]

    def add_sequence(self, seq_id: int) -> None: ...
    def fork(self, parent: int, child: int) -> None: ...
    def free(self, seq_id: int) -> None: ...
    def reserve(self, seq_ids: Sequence[int], num_new: Sequence[int]) -> StepPlan: ...
    def write(self, layer: int, plan: StepPlan, k: torch.Tensor, v: torch.Tensor) -> None: ...
    def attend(self, layer: int, plan: StepPlan, q: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TinyDecoderConfig:
    """Sizes of the tiny decoder.

    Attributes:
        vocab_size: Tokens in the vocabulary. Default 64.
        d_model: Width of the residual stream. Default 32.
        num_heads: Attention heads (must divide d_model). Default 4.
        num_layers: Transformer blocks. Default 2.
        d_ff: Width of the MLP. Default 64.
        max_seq_len: Longest sequence (learned positions). Default 256.
    """

    vocab_size: int = 64
    d_model: int = 32
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 64
    max_seq_len: int = 256

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_seq_len"):
            _check_positive(key, getattr(self, key))
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


class _Block(nn.Module):
    def __init__(self, cfg: TinyDecoderConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (bsz, t, self.heads, d // self.heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(attn.flatten(2))
        return x + self.mlp(self.ln2(x))


class TinyDecoder(nn.Module):
    """Decoder-only transformer with random weights.

    Args:
        cfg: Sizes. Default :class:`TinyDecoderConfig()`.
        seed: Seed of the weight initialization (the module owns its generator). Default 0.
        dtype: Parameter type. Default float32.
    """

    def __init__(self, cfg: TinyDecoderConfig | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg or TinyDecoderConfig()
        c = self.cfg
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_seq_len, c.d_model)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    # Scale 1/sqrt(fan_in) keeps activations O(1), so the greedy argmax is
                    # decisive rather than a near-tie among almost uniform logits.
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            self.tok.weight.mul_(c.d_model**0.5)
            self.pos.weight.mul_(c.d_model**0.5)
        self.to(dtype)
        self.eval()

    def new_cache(self, kind: str = "paged", *, block_size: int = 16, num_blocks: int = 64,
                  max_seqs: int = 8, device: str | torch.device = "cpu") -> KVCache:
        """A cache shaped for this model: ``kind`` is "paged" or "contiguous"."""
        from capabilities.inference.contiguous_kv import ContiguousKVCache

        c = self.cfg
        dtype = self.head.weight.dtype
        common = dict(num_layers=c.num_layers, num_heads=c.num_heads, head_dim=c.head_dim, dtype=dtype, device=device)
        if kind == "paged":
            return PagedKVCache(block_size=block_size, num_blocks=num_blocks, **common)
        if kind == "contiguous":
            return ContiguousKVCache(max_seq_len=c.max_seq_len, max_seqs=max_seqs, **common)
        raise ValueError(f"kind must be 'paged' or 'contiguous', got {kind!r}")

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, plan: StepPlan, cache: KVCache) -> torch.Tensor:
        """Logits ``[B, T, V]`` of a step whose new tokens ``[B, T]`` the ``plan`` placed in ``cache``."""
        dev = self.head.weight.device
        x = self.tok(tokens.to(dev)) + self.pos(plan.q_positions.to(dev))
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv_heads(x)
            cache.write(i, plan, k, v)
            x = block.finish(x, cache.attend(i, plan, q))
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def forward_full(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, V]`` without any cache (PyTorch's causal SDPA): the reference."""
        dev = self.head.weight.device
        tokens = tokens.to(dev)
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=dev))[None]
        for block in self.blocks:
            q, k, v = block.qkv_heads(x)
            attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            x = block.finish(x, attn.transpose(1, 2))
        return self.head(self.ln_f(x))


def generate(model: TinyDecoder, cache: KVCache, prompts: Sequence[Sequence[int]],
             max_new_tokens: int | Sequence[int], *, first_seq_id: int = 0,
             on_step: Callable[[int, Any], None] | None = None) -> list[list[int]]:
    """Greedy generation for a batch of prompts of different lengths through ``cache``.

    Args:
        model: The decoder.
        cache: A paged or contiguous cache with room for the batch.
        prompts: Token ids, one non-empty list per sequence.
        max_new_tokens: New tokens per sequence (one number for all, or one each).
        first_seq_id: Sequence ids used in the cache are ``first_seq_id + i``. Default 0.
        on_step: Called as ``on_step(step, cache)`` after the prefill (step 0) and after each
            decode step; used to record memory. Default None.

    Returns:
        The generated tokens of each sequence (prompt excluded).
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("prompts must hold at least one prompt")
    budget = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budget) != n or any(b < 1 for b in budget):
        raise ValueError(f"max_new_tokens must be >= 1 per prompt ({n} prompts), got {max_new_tokens!r}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
        if len(p) + budget[i] > model.cfg.max_seq_len:
            raise ValueError(f"prompts[{i}]: {len(p)} + {budget[i]} new tokens exceed max_seq_len {model.cfg.max_seq_len}")
    ids = [first_seq_id + i for i in range(n)]
    for seq in ids:
        cache.add_sequence(seq)
    out: list[list[int]] = [[] for _ in range(n)]
    try:
        # Prefill: all prompts in one right-padded step.
        lens = [len(p) for p in prompts]
        tokens = torch.zeros((n, max(lens)), dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
        plan = cache.reserve(ids, lens)
        logits = model(tokens, plan, cache)
        last = logits[torch.arange(n), torch.tensor(lens) - 1].argmax(-1).tolist()
        active = list(range(n))
        for i in active:
            out[i].append(last[i])
        step = 0
        if on_step is not None:
            on_step(step, cache)
        # Decode: one new token for every sequence still running.
        while True:
            for i in [i for i in active if len(out[i]) >= budget[i]]:
                cache.free(ids[i])
            active = [i for i in active if len(out[i]) < budget[i]]
            if not active:
                break
            plan = cache.reserve([ids[i] for i in active], [1] * len(active))
            tokens = torch.tensor([[out[i][-1]] for i in active], dtype=torch.long)
            nxt = model(tokens, plan, cache)[:, 0].argmax(-1).tolist()
            for i, t in zip(active, nxt, strict=True):
                out[i].append(t)
            step += 1
            if on_step is not None:
                on_step(step, cache)
    except BaseException:
        for seq in ids:
            if seq in cache.lengths:
                cache.free(seq)
        raise
    return out


def generate_reference(model: TinyDecoder, prompts: Sequence[Sequence[int]],
                       max_new_tokens: int | Sequence[int]) -> list[list[int]]:
    """Greedy generation without a cache: the whole sequence is recomputed at every step."""
    budget = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    out = []
    for p, b in zip(prompts, budget, strict=True):
        seq = list(p)
        for _ in range(b):
            seq.append(int(model.forward_full(torch.tensor([seq]))[0, -1].argmax()))
        out.append(seq[len(p):])
    return out


class CachedGenerator:
    """Greedy generation through one KV cache, as an agent's :class:`envs.api.Generator`.

    Args:
        model: The decoder.
        cache: The cache to generate through (paged or contiguous). Default a new paged cache
            of ``num_blocks`` blocks of ``block_size`` slots.
        block_size: Token slots per block of the default cache. Default 16.
        num_blocks: Blocks of the default cache. Default 64.
        on_step: Called as ``on_step(step, cache)`` after each step (see :func:`generate`). Default None.
    """

    def __init__(self, model: TinyDecoder, cache: KVCache | None = None, *, block_size: int = 16, num_blocks: int = 64,
                 on_step: Callable[[int, Any], None] | None = None) -> None:
        self.model = model
        self.cache = cache if cache is not None else model.new_cache("paged", block_size=block_size, num_blocks=num_blocks)
        self.on_step = on_step
        self._next_id = 0

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int]) -> list[list[int]]:
        """Greedy continuations of ``prompts`` (see :func:`generate`); sequence ids never repeat."""
        first = self._next_id
        self._next_id += len(prompts)
        return generate(self.model, self.cache, prompts, max_new_tokens, first_seq_id=first, on_step=self.on_step)
