"""The reference the paged cache is measured against: one contiguous max-length row per sequence.

This is what a static KV cache does (for example Hugging Face's ``StaticCache``): every
sequence gets ``max_seq_len`` slots up front, however short it turns out to be. It has the
same ``add_sequence / fork / free / reserve / write / attend`` interface as
:class:`~capabilities.inference.paged_kv.PagedKVCache`, so the tiny decoder runs on either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from capabilities.inference.paged_kv import OutOfBlocks, StepPlan, _check_positive


class ContiguousKVCache:
    """``max_seqs`` rows of ``max_seq_len`` slots, one row per live sequence.

    Args:
        num_layers: Transformer layers.
        num_heads: Attention heads.
        head_dim: Size of each head.
        max_seq_len: Slots reserved per sequence.
        max_seqs: Rows (sequences that can be live at once).
        dtype: Element type. Default float32.
        device: Device. Default "cpu".
    """

    def __init__(self, *, num_layers: int, num_heads: int, head_dim: int, max_seq_len: int,
                 max_seqs: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        for key, value in (("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim),
                           ("max_seq_len", max_seq_len), ("max_seqs", max_seqs)):
            _check_positive(key, value)
        self.max_seq_len = max_seq_len
        shape = (num_layers, max_seqs, max_seq_len, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free_rows = list(range(max_seqs - 1, -1, -1))
        self.rows: dict[int, int] = {}
        self.lengths: dict[int, int] = {}

    def add_sequence(self, seq_id: int) -> None:
        """Reserves a whole row for a new sequence."""
        if seq_id in self.rows:
            raise ValueError(f"sequence {seq_id} already exists")
        if not self._free_rows:
            raise OutOfBlocks(f"all {self.k.shape[1]} rows are in use")
        self.rows[seq_id] = self._free_rows.pop()
        self.lengths[seq_id] = 0

    def fork(self, parent: int, child: int) -> None:
        """A contiguous cache cannot share: the child gets a full copy of the parent's row."""
        self.add_sequence(child)
        self.k[:, self.rows[child]] = self.k[:, self.rows[parent]]
        self.v[:, self.rows[child]] = self.v[:, self.rows[parent]]
        self.lengths[child] = self.lengths[parent]

    def free(self, seq_id: int) -> None:
        """Returns the sequence's row."""
        self._free_rows.append(self.rows.pop(seq_id))
        del self.lengths[seq_id]

    def reserve(self, seq_ids: Sequence[int], num_new: Sequence[int]) -> StepPlan:
        """Grows each sequence by ``num_new`` tokens inside its row."""
        seq_ids = list(seq_ids)
        for seq, n in zip(seq_ids, num_new, strict=True):
            if self.lengths[seq] + n > self.max_seq_len:
                raise OutOfBlocks(f"sequence {seq} would reach {self.lengths[seq] + n} tokens > max_seq_len {self.max_seq_len}")
        tmax = max(num_new, default=0)
        q_positions = torch.zeros((len(seq_ids), tmax), dtype=torch.long)
        valid = torch.zeros((len(seq_ids), tmax), dtype=torch.bool)
        slots = torch.zeros((len(seq_ids), tmax), dtype=torch.long)
        for row, (seq, n) in enumerate(zip(seq_ids, num_new, strict=True)):
            start = self.lengths[seq]
            q_positions[row, :n] = torch.arange(start, start + n)
            valid[row, :n] = True
            slots[row, :n] = self.rows[seq] * self.max_seq_len + q_positions[row, :n]
            self.lengths[seq] = start + n
        rows = torch.tensor([self.rows[s] for s in seq_ids], dtype=torch.long)
        return StepPlan(seq_ids, q_positions, valid, slots,
                        torch.tensor([self.lengths[s] for s in seq_ids], dtype=torch.long), rows[:, None])

    def write(self, layer: int, plan: StepPlan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores the step's new keys and values ``[B, T, H, D]``."""
        heads, dim = self.k.shape[-2:]
        mask = plan.valid.to(k.device)
        slots = plan.slot_mapping.to(k.device)[mask]
        self.k[layer].view(-1, heads, dim)[slots] = k[mask]
        self.v[layer].view(-1, heads, dim)[slots] = v[mask]

    def attend(self, layer: int, plan: StepPlan, q: torch.Tensor) -> torch.Tensor:
        """Masked causal attention over each sequence's row (plain softmax, no blocks)."""
        rows = plan.block_tables[:, 0].to(q.device)
        k = self.k[layer][rows]  # [B, S, H, D]
        v = self.v[layer][rows]
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
        kpos = torch.arange(self.max_seq_len, device=q.device)
        qpos = plan.q_positions.to(q.device)
        ctx = plan.context_lens.to(q.device)
        visible = (kpos[None, None, :] <= qpos[:, :, None]) & (kpos[None, None, :] < ctx[:, None, None])
        weights = torch.softmax(scores.masked_fill(~visible[:, None], -math.inf), dim=-1)
        return torch.einsum("bhts,bshd->bthd", weights, v)

    def slots_reserved(self) -> int:
        """Slots of every row in use."""
        return len(self.rows) * self.max_seq_len

    def tokens_stored(self) -> int:
        """Tokens held."""
        return sum(self.lengths.values())
