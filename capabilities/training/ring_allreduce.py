"""Ring all-reduce on point-to-point messages, and two baselines (naive, binomial tree).

Ring (Patarasuk & Yuan 2009; Baidu's ring all-reduce): the flat tensor is cut into N chunks.
Reduce-scatter: in step s = 0..N-2, rank r sends chunk (r - s) mod N to rank r+1 and adds
chunk (r - s - 1) mod N arriving from rank r-1; afterwards rank r holds the full sum of chunk
(r + 1) mod N. All-gather: N-1 more steps pass the reduced chunks around the ring.

Pipelining: each chunk is cut again into segments. A segment is forwarded with ``isend`` as
soon as it has been reduced, so the next hop starts on it while this rank is still receiving
and adding the rest of the chunk; the reduce-scatter runs straight into the all-gather.

Pre-posted receives: gloo's TCP transport ships an ``isend`` only once the receiver has posted
the matching ``irecv`` (a recv-ready notification travels back first). Receives posted when a
step begins would make every message wait for that round trip, so the receives of the next
``_AHEAD`` steps are always posted: reduce-scatter data lands in rotating scratch slots while
this rank is still adding the previous step, all-gather data lands straight in the tensor.
(An all-gather receive may overwrite a chunk whose reduce-scatter ``isend`` has not been waited
yet: the reduced segment can only arrive after the right neighbour received this rank's part
of it, so the outgoing bytes have left the buffer by then.) The scratch slots are kept per
(device, dtype) between calls, because freshly mapped pages for tens of MB cost more than the
transfer itself; :func:`release_scratch` frees them.

Bytes: rank r sends every chunk but (r+1) mod N in the reduce-scatter and every chunk but
(r+2) mod N in the all-gather, i.e. ``2 * B - bytes(chunk (r+1)%N) - bytes(chunk (r+2)%N)``.
When N divides the element count that is exactly ``2 (N-1)/N * B``. Otherwise chunks are
``numel // N`` elements and the first ``numel % N`` get one more, so one rank's count is
within 2 elements of ``2 (N-1)/N * B`` and the sum over all ranks is exactly ``2 (N-1) B``.
The shape check before the transfer (a small all_gather of 16 int64 values) is not counted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# Steps whose receives are posted ahead of the step being reduced (scratch: that many + 1 chunks).
_AHEAD = 2
# Scratch buffers by (device, dtype); taken out while in use, so concurrent calls never share one.
_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_META = 16  # int64 slots describing a tensor: ndim, dtype id, numel, shape (up to 13 dims)
_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8]


def _group_info(group: Any) -> tuple[int, int, list[int]]:
    """(rank in group, size, global rank of each group rank)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_allreduce needs an initialized process group (dist.init_process_group)")
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given group")
    if group is None or group is dist.group.WORLD:
        peers = list(range(size))
    else:
        peers = [dist.get_global_rank(group, r) for r in range(size)]
    return rank, size, peers


def check_same_shape(tensor: torch.Tensor, group: Any = None) -> None:
    """Raises ValueError on every rank when ranks hold tensors of different shape or dtype."""
    _, size, _ = _group_info(group)
    if tensor.dim() > _META - 3:
        raise ValueError(f"tensor has {tensor.dim()} dimensions; at most {_META - 3} are supported")
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"tensor dtype {tensor.dtype} is not supported (allowed: {_DTYPES})")
    meta = torch.full((_META,), -1, dtype=torch.int64)
    meta[0], meta[1], meta[2] = tensor.dim(), _DTYPES.index(tensor.dtype), tensor.numel()
    meta[3:3 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    everyone = [torch.empty_like(meta) for _ in range(size)]
    dist.all_gather(everyone, meta, group=group)
    if any(not torch.equal(m, everyone[0]) for m in everyone):
        desc = [f"rank {r}: {tuple(m[3:3 + int(m[0])].tolist())} {_DTYPES[int(m[1])]}" for r, m in enumerate(everyone)]
        raise ValueError("all-reduce needs the same shape and dtype on every rank, got " + "; ".join(desc))


def chunk_bounds(numel: int, parts: int) -> list[tuple[int, int]]:
    """Splits ``range(numel)`` into ``parts`` contiguous pieces; the first ``numel % parts`` are one longer."""
    base, extra = divmod(numel, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def ring_bytes(numel: int, element_size: int, world_size: int, rank: int) -> int:
    """The exact bytes :func:`ring_allreduce` sends from ``rank`` (see the module docstring)."""
    if world_size == 1:
        return 0
    c = chunk_bounds(numel, world_size)
    size = lambda i: c[i % world_size][1] - c[i % world_size][0]  # noqa: E731
    return element_size * (2 * numel - size(rank + 1) - size(rank + 2))


def release_scratch() -> None:
    """Frees the scratch buffers :func:`ring_allreduce` keeps between calls."""
    _SCRATCH.clear()


def _take_scratch(like: torch.Tensor, numel: int) -> torch.Tensor:
    key = (str(like.device), like.dtype)
    buf = _SCRATCH.pop(key, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf


def ring_allreduce(
    tensor: torch.Tensor,
    group: Any = None,
    *,
    segment_bytes: int = 4 << 20,
    check_shapes: bool = True,
) -> int:
    """Sums ``tensor`` over the ranks of ``group`` in place, around a ring. Mirrors
    ``torch.distributed.all_reduce(tensor, op=SUM, group=group)``.

    Args:
        tensor: The local tensor; overwritten with the sum on every rank. Any shape and size.
        group: A process group; None for the default group.
        segment_bytes: Pipelining granularity: each chunk is sent in pieces of about this many
            bytes, each forwarded as soon as it is reduced. Default 4 MiB (on an
            oversubscribed CPU, fewer and larger messages beat a deeper pipeline).
        check_shapes: First check that every rank passes the same shape and dtype (a clear
            ValueError instead of a hang or garbage). Default True.

    Returns:
        The payload bytes this rank sent (``2 (N-1)/N`` of the tensor's bytes; see module doc).

    Raises:
        RuntimeError: no initialized process group, or a peer failed (gloo's error).
        ValueError: shapes or dtypes differ across ranks; bad ``segment_bytes``.

    Memory: a scratch buffer of ``min(N-1, 3)`` chunks (``3/N`` of the tensor at most), kept
    for the next call on the same device and dtype until :func:`release_scratch`.
    """
    if segment_bytes < 1:
        raise ValueError(f"segment_bytes must be >= 1, got {segment_bytes!r}")
    rank, n, _ = _group_info(group)
    if n == 1:
        return 0
    if check_shapes:
        check_same_shape(tensor, group)
    # The process group's own send/recv (group ranks, no per-call checks in Python): about
    # 0.4 ms less per call than dist.isend/irecv, a tenth of a 1 MB all-reduce here.
    pg = dist.group.WORLD if group is None else group
    right, left = (rank + 1) % n, (rank - 1) % n
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    esize = flat.element_size()
    chunks = chunk_bounds(flat.numel(), n)
    seg_elems = max(1, segment_bytes // esize)
    # Segments of each chunk: the pipelining unit.
    segs = [[(a, min(a + seg_elems, hi)) for a in range(lo, hi, seg_elems)] for lo, hi in chunks]
    max_segs = max(len(s) for s in segs)
    steps = 2 * (n - 1)
    slots = min(n - 1, _AHEAD + 1)
    width = max(hi - lo for lo, hi in chunks)
    scratch_buf = _take_scratch(flat, slots * width)
    scratch = scratch_buf[:slots * width].view(slots, width)
    sent = 0
    sends: list[Any] = []
    recvs: dict[int, list[Any]] = {}
    posted = 0

    def chunk_at(step: int) -> int:
        """The chunk arriving from the left in ``step``."""
        return (rank - step - 1) % n if step < n - 1 else (rank - step + n - 1) % n

    def post_recvs(upto: int) -> None:
        # Step s uses slot s % slots, last used by step s - slots, which is finished: posting
        # happens at the start of step s - _AHEAD >= s - slots + 1.
        nonlocal posted
        while posted < min(upto, steps):
            step, chunk = posted, chunk_at(posted)
            lo = chunks[chunk][0]
            recvs[step] = [
                pg.recv([scratch[step % slots, a - lo:b - lo] if step < n - 1 else flat[a:b]], left,
                        step * max_segs + k)  # a tag per (step, segment)
                for k, (a, b) in enumerate(segs[chunk])
            ]
            posted += 1

    def post_send(step: int, chunk: int, k: int) -> None:
        nonlocal sent
        a, b = segs[chunk][k]
        sends.append(pg.send([flat[a:b]], right, step * max_segs + k))
        sent += (b - a) * esize

    post_recvs(_AHEAD + 1)
    for k in range(len(segs[rank])):
        post_send(0, rank, k)
    for step in range(steps):
        post_recvs(step + _AHEAD + 1)
        chunk = chunk_at(step)
        lo = chunks[chunk][0]
        for k, (a, b) in enumerate(segs[chunk]):
            recvs[step][k].wait()
            if step < n - 1:
                flat[a:b] += scratch[step % slots, a - lo:b - lo]
            # Forward at once; in the last all-gather step the chunk stops here.
            if step + 1 < steps:
                post_send(step + 1, chunk, k)
        del recvs[step]
    # gloo's send work must be waited exactly once (a second wait blocks).
    for w in sends:
        w.wait()
    _SCRATCH[(str(flat.device), flat.dtype)] = scratch_buf
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view(tensor.shape))
    return sent


def naive_allreduce(tensor: torch.Tensor, group: Any = None, *, root: int = 0) -> int:
    """Gather-then-broadcast baseline: everyone sends to ``root``, which sums and sends back.

    Root sends ``(N-1) B`` and receives as much: its link is the bottleneck, which is what the
    ring removes. Returns the payload bytes this rank sent (B for others, (N-1) B for root).
    """
    rank, n, peers = _group_info(group)
    if n == 1:
        return 0
    if not 0 <= root < n:
        raise ValueError(f"root must be in [0, {n - 1}], got {root!r}")
    check_same_shape(tensor, group)
    flat = tensor.contiguous().view(-1)
    nbytes = flat.numel() * flat.element_size()
    if rank == root:
        buf = torch.empty_like(flat)
        for r in range(n):
            if r != root:
                dist.recv(buf, peers[r], group=group)
                flat += buf
        works = [dist.isend(flat, peers[r], group=group) for r in range(n) if r != root]
        for w in works:
            w.wait()
        sent = (n - 1) * nbytes
    else:
        dist.send(flat, peers[root], group=group)
        dist.recv(flat, peers[root], group=group)
        sent = nbytes
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view(tensor.shape))
    return sent


def tree_allreduce(tensor: torch.Tensor, group: Any = None) -> int:
    """Binomial-tree baseline: reduce up a tree to rank 0, then broadcast down it.

    log2(N) rounds each way; every rank but 0 sends B up once, and an inner node sends B to
    each child on the way down. Returns the payload bytes this rank sent.
    """
    rank, n, peers = _group_info(group)
    if n == 1:
        return 0
    check_same_shape(tensor, group)
    flat = tensor.contiguous().view(-1)
    nbytes = flat.numel() * flat.element_size()
    buf = torch.empty_like(flat)
    sent = 0
    # Reduce: in round d, ranks with bit d set send to rank - 2^d and drop out.
    d = 1
    while d < n:
        if rank % (2 * d) == d:
            dist.send(flat, peers[rank - d], group=group)
            sent += nbytes
            break
        if rank % (2 * d) == 0 and rank + d < n:
            dist.recv(buf, peers[rank + d], group=group)
            flat += buf
        d *= 2
    # Broadcast: the same tree in reverse.
    d = 1
    while d < n:
        d *= 2
    d //= 2
    while d >= 1:
        if rank % (2 * d) == 0 and rank + d < n:
            dist.send(flat, peers[rank + d], group=group)
            sent += nbytes
        elif rank % (2 * d) == d:
            dist.recv(flat, peers[rank - d], group=group)
        d //= 2
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view(tensor.shape))
    return sent


ALGORITHMS = {"ring": ring_allreduce, "naive": naive_allreduce, "tree": tree_allreduce}


class RingAllReduce:
    """The ring all-reduce as an agent's :class:`envs.api.Communicator`.

    Args:
        group: The process group to reduce over; None for the default group.
        algorithm: ``"ring"``, ``"naive"`` or ``"tree"``. Default ring.
        average: Divide by the group size after summing (gradient averaging). Default False.
    """

    def __init__(self, group: Any = None, algorithm: str = "ring", average: bool = False) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        self.group, self.algorithm, self.average = group, algorithm, average
        self.bytes_sent = 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Reduces ``tensor`` in place and returns it; adds to ``bytes_sent``."""
        self.bytes_sent += ALGORITHMS[self.algorithm](tensor, self.group)
        if self.average:
            tensor /= dist.get_world_size(self.group)
        return tensor
