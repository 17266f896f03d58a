"""Paged KV cache: allocator invariants, copy-on-write, prefix sharing, attention through blocks."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn import functional as F

from capabilities.inference.contiguous_kv import ContiguousKVCache
from capabilities.inference.kv_memory import (
    memory_report,
    prefix_sharing_blocks,
    sequences_in_budget,
)
from capabilities.inference.paged_kv import (
    BlockAllocator,
    OutOfBlocks,
    PagedKVCache,
    paged_attention,
)

H, D = 2, 4


def _cache(block_size: int = 4, num_blocks: int = 32, layers: int = 1) -> PagedKVCache:
    return PagedKVCache(num_layers=layers, num_heads=H, head_dim=D, block_size=block_size,
                        num_blocks=num_blocks, dtype=torch.float64)


def _fill(cache: PagedKVCache, seq: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Appends n random tokens to seq (one step); returns the keys and values written."""
    plan = cache.reserve([seq], [n])
    k = torch.randn(1, n, H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(1, n, H, D, generator=gen, dtype=torch.float64)
    cache.write(0, plan, k, v)
    return k[0], v[0]


# ---- allocator ------------------------------------------------------------------------------

def test_allocator_refcounts_and_free_list() -> None:
    alloc = BlockAllocator(num_blocks=3, block_size=2)
    a, b = alloc.allocate(), alloc.allocate()
    assert a != b and alloc.num_free == 1 and alloc.refcount(a) == 1
    alloc.share(a)
    assert alloc.refcount(a) == 2
    alloc.release(a)
    assert alloc.refcount(a) == 1 and alloc.num_free == 1
    alloc.release(a)
    assert alloc.refcount(a) == 0 and alloc.num_free == 2
    with pytest.raises(ValueError, match="double release"):
        alloc.release(a)
    with pytest.raises(ValueError, match="free"):
        alloc.share(a)
    alloc.allocate()
    alloc.allocate()
    with pytest.raises(OutOfBlocks):
        alloc.allocate()


def test_allocator_check_catches_lost_and_doubly_owned_blocks() -> None:
    alloc = BlockAllocator(num_blocks=4, block_size=2)
    a, b = alloc.allocate(), alloc.allocate()
    alloc.check({0: [a], 1: [b]})
    with pytest.raises(AssertionError, match="lost or doubly owned"):
        alloc.check({0: [a]})  # b is held by nobody: lost
    with pytest.raises(AssertionError, match="lost or doubly owned"):
        alloc.check({0: [a], 1: [b], 2: [b]})  # b in two tables with refcount 1


def test_random_operations_keep_invariants() -> None:
    """Many random adds, appends, forks and frees: after each, every block is accounted for."""
    rnd = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    cache = _cache(block_size=3, num_blocks=64)
    live: list[int] = []
    next_id = 0
    for _ in range(300):
        op = rnd.random()
        if op < 0.25 or not live:
            cache.add_sequence(next_id)
            live.append(next_id)
            next_id += 1
        elif op < 0.6:
            seq = rnd.choice(live)
            n = rnd.randint(1, 5)
            if cache.blocks_needed([seq], [n]) <= cache.allocator.num_free:
                free_before = cache.allocator.num_free
                need = cache.blocks_needed([seq], [n])
                _fill(cache, seq, n, gen)
                assert cache.allocator.num_free == free_before - need
            else:
                with pytest.raises(OutOfBlocks):
                    _fill(cache, seq, n, gen)
        elif op < 0.75:
            cache.fork(rnd.choice(live), next_id)
            live.append(next_id)
            next_id += 1
        else:
            cache.free(live.pop(rnd.randrange(len(live))))
        cache.check()
    for seq in live:
        cache.free(seq)
    cache.check()
    assert cache.allocator.num_free == cache.allocator.num_blocks


def test_reserve_is_all_or_nothing() -> None:
    cache = _cache(block_size=4, num_blocks=3)
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.reserve([0], [8])  # two blocks
    with pytest.raises(OutOfBlocks):
        cache.reserve([0, 1], [1, 4])  # needs 2, has 1
    assert cache.lengths == {0: 8, 1: 0} and cache.allocator.num_free == 1
    cache.check()


# ---- copy-on-write and prefix sharing -------------------------------------------------------

def test_fork_shares_blocks_and_copy_on_write_keeps_both_histories() -> None:
    gen = torch.Generator().manual_seed(1)
    cache = _cache(block_size=4)
    cache.add_sequence(0)
    k0, v0 = _fill(cache, 0, 6, gen)  # one full block + a half-filled one
    cache.fork(0, 1)
    assert cache.block_tables[1] == cache.block_tables[0]
    assert [cache.allocator.refcount(b) for b in cache.block_tables[0]] == [2, 2]
    used = cache.allocator.num_used

    k1, _ = _fill(cache, 1, 1, gen)  # child writes into the shared half block: copy-on-write
    assert cache.cow_copies == 1 and cache.allocator.num_used == used + 1
    assert cache.block_tables[1][0] == cache.block_tables[0][0]  # full block still shared
    assert cache.block_tables[1][1] != cache.block_tables[0][1]
    assert [cache.allocator.refcount(b) for b in cache.block_tables[0]] == [2, 1]
    k0b, _ = _fill(cache, 0, 1, gen)  # parent is now the only holder: writes in place
    assert cache.cow_copies == 1
    cache.check()

    parent_k, parent_v = cache.gather(0, 0)
    child_k, _ = cache.gather(0, 1)
    assert torch.equal(parent_k, torch.cat([k0, k0b])) and torch.equal(parent_v[:6], v0)
    assert torch.equal(child_k, torch.cat([k0, k1]))


def test_prefix_sharing_saves_the_prompt_blocks() -> None:
    # prompt 10 tokens in blocks of 4: 2 full blocks shared by all 5 samples, the half block
    # copied on write by 4 of them; each sample then needs ceil((10 + 7) / 4) = 5 blocks.
    shared, unshared = prefix_sharing_blocks(10, 5, 7, block_size=4)
    assert unshared == 5 * 5
    assert shared == 2 + 5 * 3


def test_memory_accounting_on_known_lengths() -> None:
    rep = memory_report([5, 16, 17], block_size=8, max_seq_len=32)
    assert rep.tokens == 38 and rep.paged_slots == 8 * (1 + 2 + 3) and rep.contiguous_slots == 96
    assert rep.paged_waste == pytest.approx(1 - 38 / 48)
    fit = sequences_in_budget([5, 16, 17, 30], budget_tokens=48, block_size=8, max_seq_len=32)
    assert fit == (3, 1)  # 1 + 2 + 3 blocks fill 6 of 6; the fourth (4 blocks) does not fit


# ---- attention through the block table ------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_paged_attention_equals_contiguous_sdpa(chunk: int) -> None:
    """Decode and chunked-prefill queries of ragged sequences against PyTorch's SDPA."""
    gen = torch.Generator().manual_seed(2)
    cache = _cache(block_size=3, num_blocks=40)
    lengths = [1, 7, 12, 4]
    full = {}
    for seq, n in enumerate(lengths):
        cache.add_sequence(seq)
        full[seq] = _fill(cache, seq, n, gen)
    # A step of ragged new tokens: 1, 3, 2, 5 queries that see the cache plus themselves.
    new = [1, 3, 2, 5]
    plan = cache.reserve(list(range(4)), new)
    q = torch.randn(4, max(new), H, D, generator=gen, dtype=torch.float64)
    k = torch.randn(4, max(new), H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(4, max(new), H, D, generator=gen, dtype=torch.float64)
    cache.write(0, plan, k, v)
    out = paged_attention(q, cache.k[0], cache.v[0], plan.block_tables, plan.context_lens, plan.q_positions,
                          blocks_per_chunk=chunk)
    for seq, n in enumerate(new):
        keys = torch.cat([full[seq][0], k[seq, :n]]).transpose(0, 1)  # [H, L, D]
        vals = torch.cat([full[seq][1], v[seq, :n]]).transpose(0, 1)
        L = keys.shape[1]
        # Query i sits at position L - n + i and sees keys 0..L-n+i.
        mask = torch.arange(L)[None, :] <= (L - n + torch.arange(n))[:, None]
        ref = F.scaled_dot_product_attention(q[seq, :n].transpose(0, 1), keys, vals, attn_mask=mask)
        assert torch.allclose(out[seq, :n], ref.transpose(0, 1), atol=1e-10)


def test_paged_equals_contiguous_cache_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    paged = PagedKVCache(num_layers=2, num_heads=H, head_dim=D, block_size=4, num_blocks=20)
    contig = ContiguousKVCache(num_layers=2, num_heads=H, head_dim=D, max_seq_len=24, max_seqs=3)
    for cache in (paged, contig):
        for seq in range(3):
            cache.add_sequence(seq)
    for new in ([5, 9, 2], [1, 1, 1], [3, 0, 6]):
        q, k, v = (torch.randn(3, max(new), H, D, generator=gen) for _ in range(3))
        plans = [c.reserve([0, 1, 2], new) for c in (paged, contig)]
        outs = []
        for cache, plan in zip((paged, contig), plans, strict=True):
            for layer in range(2):
                cache.write(layer, plan, k, v)
            outs.append(cache.attend(1, plan, q))
        valid = plans[0].valid
        assert torch.allclose(outs[0][valid], outs[1][valid], atol=1e-6)


def test_paged_attention_is_not_trivially_equal() -> None:
    """The check above can fail: a corrupted block table changes the output."""
    gen = torch.Generator().manual_seed(4)
    cache = _cache(block_size=2, num_blocks=10)
    cache.add_sequence(0)
    _fill(cache, 0, 6, gen)
    plan = cache.reserve([0], [1])
    q = torch.randn(1, 1, H, D, generator=gen, dtype=torch.float64)
    cache.write(0, plan, q, q)
    good = cache.attend(0, plan, q)
    bad = paged_attention(q, cache.k[0], cache.v[0], plan.block_tables.flip(1), plan.context_lens, plan.q_positions)
    assert not torch.allclose(good, bad)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [({"block_size": 0}, "block_size"), ({"num_blocks": 0}, "num_blocks"),
                                         ({"head_dim": -1}, "head_dim")])
def test_bad_sizes_name_the_parameter(kwargs: dict, name: str) -> None:
    args = dict(num_layers=1, num_heads=1, head_dim=1, block_size=4, num_blocks=4) | kwargs
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
        PagedKVCache(**args)


def test_sequence_errors() -> None:
    cache = _cache()
    cache.add_sequence(0)
    with pytest.raises(ValueError, match="already exists"):
        cache.add_sequence(0)
    with pytest.raises(KeyError, match="parent sequence 7"):
        cache.fork(7, 8)
    with pytest.raises(ValueError, match="num_new"):
        cache.reserve([0], [-1])
