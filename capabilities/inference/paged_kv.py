"""Paged KV cache: fixed-size blocks, a free list, reference counts and copy-on-write.

The idea of vLLM's PagedAttention (Kwon et al., SOSP 2023): instead of reserving room for
``max_seq_len`` tokens per sequence up front, the keys and values of every sequence live in
fixed-size *blocks* taken from one shared pool as the sequence grows. A per-sequence *block
table* maps logical block ``i`` (tokens ``i*B .. i*B+B-1``) to a physical block of the pool,
so the only waste is the unfilled tail of each sequence's last block.

Sequences that start with the same prompt share the prompt's blocks (:meth:`PagedKVCache.fork`):
a block's reference count says how many block tables hold it, and a sequence about to write
into a block that others still hold first copies it (copy-on-write).

Attention reads keys and values through the block table one block at a time with an online
softmax (:func:`paged_attention`), so no contiguous copy of a sequence's cache is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


class OutOfBlocks(RuntimeError):
    """The pool has fewer free blocks than a request needs."""


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class BlockAllocator:
    """Hands out physical block ids from a free list and counts who holds each block.

    Args:
        num_blocks: Blocks in the pool (>= 1).
        block_size: Token slots per block (>= 1).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        _check_positive("num_blocks", num_blocks)
        _check_positive("block_size", block_size)
        self.num_blocks = num_blocks
        self.block_size = block_size
        # A stack: the block freed last is handed out first (it is the one still warm in cache).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._refcount = [0] * num_blocks

    @property
    def num_free(self) -> int:
        """Blocks on the free list."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one block table."""
        return self.num_blocks - len(self._free)

    def refcount(self, block: int) -> int:
        """How many block tables hold ``block``."""
        return self._refcount[block]

    def allocate(self) -> int:
        """Takes one block off the free list with reference count 1.

        Raises:
            OutOfBlocks: The free list is empty.
        """
        if not self._free:
            raise OutOfBlocks(f"all {self.num_blocks} blocks of {self.block_size} slots are in use")
        block = self._free.pop()
        self._refcount[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more block table holds ``block`` (prefix sharing)."""
        if self._refcount[block] < 1:
            raise ValueError(f"block {block} is free; only a held block can be shared")
        self._refcount[block] += 1

    def release(self, block: int) -> None:
        """One block table lets go of ``block``; the last one returns it to the free list."""
        if self._refcount[block] < 1:
            raise ValueError(f"block {block} is already free (double release)")
        self._refcount[block] -= 1
        if self._refcount[block] == 0:
            self._free.append(block)

    def check(self, block_tables: Mapping[int, Sequence[int]]) -> None:
        """Asserts the allocator's invariants against the block tables that use it.

        Every block is either on the free list exactly once with count 0, or held with a count
        equal to the number of places it appears in ``block_tables``: no block lost, none
        handed to two owners without being counted as shared.

        Raises:
            AssertionError: Naming the first block that breaks an invariant.
        """
        held = [0] * self.num_blocks
        for table in block_tables.values():
            for block in table:
                held[block] += 1
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a block is on the free list twice")
        for block in range(self.num_blocks):
            if block in free:
                if self._refcount[block] != 0 or held[block] != 0:
                    raise AssertionError(f"block {block} is free but held {held[block]} times "
                                         f"with refcount {self._refcount[block]}")
            elif self._refcount[block] != held[block] or held[block] == 0:
                raise AssertionError(f"block {block}: refcount {self._refcount[block]} but held "
                                     f"{held[block]} times (lost or doubly owned)")


@dataclass
class StepPlan:
    """Where the new tokens of one forward step go and what each query may see.

    Rows are the step's sequences; columns the new tokens, right-padded to the longest.

    Attributes:
        seq_ids: The sequences of the step, one per row.
        q_positions: Absolute position of each new token, ``[B, T]`` (0 where padding).
        valid: Which entries are real tokens, ``[B, T]`` bool.
        slot_mapping: Flat slot (``block * block_size + offset``) of each new token, ``[B, T]``
            (0 where padding; never written).
        context_lens: Tokens in each sequence's cache after the step, ``[B]``.
        block_tables: Physical block of each logical block, ``[B, M]`` padded with 0
            (padded entries are masked by ``context_lens``). Empty for caches without blocks.
    """

    seq_ids: list[int]
    q_positions: torch.Tensor
    valid: torch.Tensor
    slot_mapping: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor


def paged_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor,
                    q_positions: torch.Tensor, *, blocks_per_chunk: int = 16) -> torch.Tensor:
    """Causal attention whose keys and values are read through block tables, chunk by chunk.

    Each iteration gathers ``blocks_per_chunk`` consecutive logical blocks of every sequence
    (one block per table entry) and folds them into a running (max, sum, weighted values)
    triple -- the online softmax of FlashAttention / PagedAttention -- so no contiguous copy of
    a whole sequence's cache is built. ``blocks_per_chunk=1`` reads exactly one block at a time
    as the PagedAttention kernel does; larger chunks mean fewer, larger tensor operations.

    Args:
        q: Queries ``[B, T, H, D]``.
        k_blocks: Key pool of one layer ``[num_blocks, block_size, H, D]``.
        v_blocks: Value pool of one layer, same shape.
        block_tables: ``[B, M]`` physical block ids.
        context_lens: ``[B]`` tokens visible to each sequence.
        q_positions: ``[B, T]`` absolute position of each query (it sees keys at positions
            ``<= q_position`` and ``< context_len``).
        blocks_per_chunk: Blocks gathered per iteration (>= 1). Default 16.

    Returns:
        ``[B, T, H, D]`` attention output.
    """
    _check_positive("blocks_per_chunk", blocks_per_chunk)
    bsz, tq, heads, dim = q.shape
    block_size = k_blocks.shape[1]
    scale = 1.0 / math.sqrt(dim)
    qh = q.transpose(1, 2) * scale  # [B, H, T, D]
    run_max = torch.full((bsz, heads, tq), -math.inf, dtype=q.dtype, device=q.device)
    run_sum = torch.zeros((bsz, heads, tq), dtype=q.dtype, device=q.device)
    acc = torch.zeros((bsz, heads, tq, dim), dtype=q.dtype, device=q.device)
    needed = -(-int(context_lens.max()) // block_size) if bsz else 0
    for j in range(0, needed, blocks_per_chunk):
        blocks = block_tables[:, j:j + blocks_per_chunk]  # [B, c]
        kb = k_blocks[blocks].flatten(1, 2)  # [B, c * bs, H, D]
        vb = v_blocks[blocks].flatten(1, 2)
        scores = torch.einsum("bhtd,bshd->bhts", qh, kb)
        kpos = j * block_size + torch.arange(kb.shape[1], device=q.device)
        visible = (kpos[None, None, :] <= q_positions[:, :, None]) & (kpos[None, None, :] < context_lens[:, None, None])
        scores = scores.masked_fill(~visible[:, None], -math.inf)
        new_max = torch.maximum(run_max, scores.amax(dim=-1))
        # A row that has seen no visible key yet keeps max -inf; shift it by 0 to avoid inf-inf.
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(scores - shift[..., None])
        rescale = torch.exp(run_max - shift)
        run_sum = run_sum * rescale + p.sum(dim=-1)
        acc = acc * rescale[..., None] + torch.einsum("bhts,bshd->bhtd", p, vb)
        run_max = new_max
    out = acc / run_sum.clamp_min(torch.finfo(q.dtype).tiny)[..., None]
    return out.transpose(1, 2)


class PagedKVCache:
    """Keys and values of many sequences in one pool of fixed-size blocks.

    Args:
        num_layers: Transformer layers (each has its own key and value pool).
        num_heads: Attention heads.
        head_dim: Size of each head.
        block_size: Token slots per block (>= 1; vLLM uses 16).
        num_blocks: Blocks in the pool; the memory budget is
            ``2 * num_layers * num_blocks * block_size * num_heads * head_dim`` elements.
        dtype: Element type of the pools. Default float32.
        device: Device of the pools. Default "cpu".
    """

    def __init__(self, *, num_layers: int, num_heads: int, head_dim: int, block_size: int,
                 num_blocks: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        for key, value in (("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim)):
            _check_positive(key, value)
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        shape = (num_layers, num_blocks, block_size, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.cow_copies = 0

    # Sequences -------------------------------------------------------------------------
    def add_sequence(self, seq_id: int) -> None:
        """Registers an empty sequence (no blocks until it gets tokens)."""
        if seq_id in self.block_tables:
            raise ValueError(f"sequence {seq_id} already exists")
        self.block_tables[seq_id] = []
        self.lengths[seq_id] = 0

    def fork(self, parent: int, child: int) -> None:
        """Starts ``child`` as a copy of ``parent`` that shares all of its blocks.

        No data moves: every block of the parent gains one reference. The first of the two
        to write into a shared, partly filled last block copies it (copy-on-write).
        """
        if parent not in self.block_tables:
            raise KeyError(f"parent sequence {parent} does not exist")
        if child in self.block_tables:
            raise ValueError(f"sequence {child} already exists")
        for block in self.block_tables[parent]:
            self.allocator.share(block)
        self.block_tables[child] = list(self.block_tables[parent])
        self.lengths[child] = self.lengths[parent]

    def free(self, seq_id: int) -> None:
        """Drops a sequence and releases its blocks."""
        for block in self.block_tables.pop(seq_id):
            self.allocator.release(block)
        del self.lengths[seq_id]

    def blocks_needed(self, seq_ids: Sequence[int], num_new: Sequence[int]) -> int:
        """Free blocks that :meth:`reserve` with the same arguments would take."""
        need = 0
        for seq, n in zip(seq_ids, num_new, strict=True):
            length = self.lengths[seq]
            need += -(-(length + n) // self.block_size) - -(-length // self.block_size)
            table = self.block_tables[seq]
            if n > 0 and length % self.block_size and self.allocator.refcount(table[-1]) > 1:
                need += 1  # the copy-on-write of the shared partial last block
        return need

    def reserve(self, seq_ids: Sequence[int], num_new: Sequence[int]) -> StepPlan:
        """Grows each sequence by ``num_new`` tokens and says where their keys and values go.

        All or nothing: when the pool cannot hold every new token nothing changes.

        Raises:
            OutOfBlocks: Fewer free blocks than the step needs.
        """
        seq_ids = list(seq_ids)
        if any(n < 0 for n in num_new):
            raise ValueError(f"num_new must be >= 0 per sequence, got {list(num_new)}")
        need = self.blocks_needed(seq_ids, num_new)
        if need > self.allocator.num_free:
            raise OutOfBlocks(f"step needs {need} blocks, {self.allocator.num_free} free")
        tmax = max(num_new, default=0)
        bsz = len(seq_ids)
        q_positions = torch.zeros((bsz, tmax), dtype=torch.long)
        valid = torch.zeros((bsz, tmax), dtype=torch.bool)
        slots = torch.zeros((bsz, tmax), dtype=torch.long)
        for row, (seq, n) in enumerate(zip(seq_ids, num_new, strict=True)):
            start = self.lengths[seq]
            for t in range(n):
                slots[row, t] = self._append_slot(seq)
            q_positions[row, :n] = torch.arange(start, start + n)
            valid[row, :n] = True
        return StepPlan(seq_ids, q_positions, valid, slots.to(self.k.device),
                        torch.tensor([self.lengths[s] for s in seq_ids], dtype=torch.long),
                        self._table_tensor(seq_ids))

    def _append_slot(self, seq: int) -> int:
        length = self.lengths[seq]
        table = self.block_tables[seq]
        offset = length % self.block_size
        if offset == 0:
            table.append(self.allocator.allocate())
        elif self.allocator.refcount(table[-1]) > 1:
            # Copy-on-write: others still read this block; write into a private copy.
            shared = table[-1]
            private = self.allocator.allocate()
            self.k[:, private] = self.k[:, shared]
            self.v[:, private] = self.v[:, shared]
            self.allocator.release(shared)
            table[-1] = private
            self.cow_copies += 1
        self.lengths[seq] = length + 1
        return table[-1] * self.block_size + offset

    def _table_tensor(self, seq_ids: Sequence[int]) -> torch.Tensor:
        width = max((len(self.block_tables[s]) for s in seq_ids), default=0)
        out = torch.zeros((len(seq_ids), max(width, 1)), dtype=torch.long)
        for row, seq in enumerate(seq_ids):
            table = self.block_tables[seq]
            out[row, : len(table)] = torch.tensor(table, dtype=torch.long)
        return out.to(self.k.device)

    # Per-layer reads and writes --------------------------------------------------------
    def write(self, layer: int, plan: StepPlan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores the step's new keys and values ``[B, T, H, D]`` of ``layer`` in their slots."""
        heads, dim = self.k.shape[-2:]
        mask = plan.valid.to(k.device)
        slots = plan.slot_mapping[mask]
        self.k[layer].view(-1, heads, dim)[slots] = k[mask]
        self.v[layer].view(-1, heads, dim)[slots] = v[mask]

    def attend(self, layer: int, plan: StepPlan, q: torch.Tensor) -> torch.Tensor:
        """Causal attention of the step's queries ``[B, T, H, D]`` over each sequence's cache."""
        dev = q.device
        return paged_attention(q, self.k[layer], self.v[layer], plan.block_tables.to(dev),
                               plan.context_lens.to(dev), plan.q_positions.to(dev))

    def gather(self, layer: int, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A contiguous copy ``([L, H, D], [L, H, D])`` of one sequence's keys and values."""
        table = torch.tensor(self.block_tables[seq_id], dtype=torch.long, device=self.k.device)
        length = self.lengths[seq_id]
        heads, dim = self.k.shape[-2:]
        k = self.k[layer][table].reshape(-1, heads, dim)[:length]
        v = self.v[layer][table].reshape(-1, heads, dim)[:length]
        return k, v

    # Accounting ------------------------------------------------------------------------
    def tokens_stored(self) -> int:
        """Distinct token slots holding data (a shared block's tokens counted once)."""
        filled: dict[int, int] = {}
        for seq, table in self.block_tables.items():
            for i, block in enumerate(table):
                filled[block] = max(filled.get(block, 0), min(self.block_size, self.lengths[seq] - i * self.block_size))
        return sum(filled.values())

    def slots_reserved(self) -> int:
        """Token slots of every block in use."""
        return self.allocator.num_used * self.block_size

    def waste(self) -> float:
        """Fraction of reserved slots that hold no token (0 when nothing is reserved)."""
        reserved = self.slots_reserved()
        return 0.0 if reserved == 0 else 1.0 - self.tokens_stored() / reserved

    def check(self) -> None:
        """Asserts the allocator invariants and that each table has exactly the blocks its length needs."""
        self.allocator.check(self.block_tables)
        for seq, table in self.block_tables.items():
            want = -(-self.lengths[seq] // self.block_size)
            if len(table) != want:
                raise AssertionError(f"sequence {seq} of length {self.lengths[seq]} holds {len(table)} blocks, needs {want}")
