"""Ring all-reduce against gloo's all_reduce on real process groups (2, 3, 4 processes)."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)
import torch.distributed as dist

from capabilities.training import (
    RingAllReduce,
    WorkerError,
    launch,
    naive_allreduce,
    ring_allreduce,
    ring_bytes,
    tree_allreduce,
)
from capabilities.training.ring_allreduce import chunk_bounds, release_scratch
from envs.api import Agent, Communicator

SIZES = [1, 2, 3, 7, 100, 1001]


def _checks(rank: int, world: int) -> dict:
    """Every check of one world size, in one process group."""
    out: dict = {"mismatch": [], "bytes": {}, "sent_naive": [], "sent_tree": []}
    for numel in SIZES:
        for seg in (8, 1 << 20):  # one element per segment (deep pipeline) and one segment per chunk
            g = torch.Generator().manual_seed(97 * rank + numel)
            x = torch.randint(-1000, 1000, (numel,), generator=g).to(torch.float64)
            ref = x.clone()
            dist.all_reduce(ref)
            y = x.clone()
            sent = ring_allreduce(y, segment_bytes=seg)
            if not torch.equal(y, ref):
                out["mismatch"].append(("ring", numel, seg))
            out["bytes"][(numel, seg)] = sent
        for name, fn in (("naive", naive_allreduce), ("tree", tree_allreduce)):
            y = x.clone()
            out[f"sent_{name}"].append(fn(y))
            if not torch.equal(y, ref):
                out["mismatch"].append((name, numel))
    # Largest first: the scratch buffer kept from a bigger call is reused for smaller ones.
    release_scratch()
    for numel in reversed(SIZES):
        x = torch.randint(-1000, 1000, (numel,), generator=torch.Generator().manual_seed(rank)).to(torch.float64)
        ref, y = x.clone(), x.clone()
        dist.all_reduce(ref)
        ring_allreduce(y, segment_bytes=64)
        if not torch.equal(y, ref):
            out["mismatch"].append(("ring, reused scratch", numel))
    # A 2-D, non-contiguous tensor is reduced in place like dist.all_reduce does it.
    base = torch.arange(35, dtype=torch.float32).reshape(5, 7) * (rank + 1)
    t, ref = base.t(), base.t().clone()
    dist.all_reduce(ref)
    ring_allreduce(t)
    out["noncontiguous_ok"] = torch.equal(t, ref) and torch.equal(base.t(), ref)
    # Integer dtype.
    xi = torch.arange(10, dtype=torch.int64) + rank
    ri = xi.clone()
    dist.all_reduce(ri)
    ring_allreduce(xi)
    out["int_ok"] = torch.equal(xi, ri)
    # A subgroup of ranks {0, 2, ...}: the ring runs over its members only.
    members = list(range(0, world, 2))
    sub = dist.new_group(members)
    if rank in members:
        z = torch.full((5,), float(rank))
        ring_allreduce(z, group=sub)
        out["subgroup"] = z.tolist()
    # Different shapes across ranks: every rank gets the same clear error, nobody hangs.
    try:
        ring_allreduce(torch.zeros(3 + rank))
        out["shape_error"] = None
    except ValueError as exc:
        out["shape_error"] = str(exc)
    # The capability, held by an agent.
    agent = Agent(id=f"rank{rank}").add(RingAllReduce(average=True))
    v = agent.get(Communicator).all_reduce(torch.full((4,), float(rank)))
    out["capability"] = (v.tolist(), agent.get(Communicator).bytes_sent)
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_equals_gloo_and_bytes_exact(world: int) -> None:
    outs = launch(_checks, world, start_method="fork", timeout_s=60)
    for rank, o in enumerate(outs):
        assert o["mismatch"] == [], f"rank {rank}: results differ from dist.all_reduce: {o['mismatch']}"
        assert o["noncontiguous_ok"] and o["int_ok"]
        assert o["shape_error"] is not None and "same shape" in o["shape_error"] and "(3,)" in o["shape_error"]
        mean = sum(range(world)) / world
        assert o["capability"][0] == [mean] * 4
        assert o["capability"][1] == ring_bytes(4, 4, world, rank)
    for numel in SIZES:
        for seg in (8, 1 << 20):
            sent = [o["bytes"][(numel, seg)] for o in outs]
            # Exact per-rank count from the chunking rule, and the exact total 2(N-1) B.
            assert sent == [ring_bytes(numel, 8, world, r) for r in range(world)]
            assert sum(sent) == 2 * (world - 1) * 8 * numel
            if numel % world == 0:
                assert sent == [2 * (world - 1) * 8 * numel // world] * world
            # Each rank is within two elements of 2(N-1)/N of the tensor.
            assert all(abs(s - 2 * (world - 1) / world * 8 * numel) <= 16 for s in sent)
    # Naive: root sends (N-1) B, everyone else B. Tree: B up from each non-root, plus B per child.
    for i, numel in enumerate(SIZES):
        assert [o["sent_naive"][i] for o in outs] == [(world - 1) * 8 * numel] + [8 * numel] * (world - 1)
        assert sum(o["sent_tree"][i] for o in outs) == 2 * (world - 1) * 8 * numel
    members = list(range(0, world, 2))
    for r in members:
        assert outs[r]["subgroup"] == [float(sum(members))] * 5


def test_chunking_rule() -> None:
    assert chunk_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert chunk_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert ring_bytes(10, 4, 4, 0) == 4 * (20 - 3 - 2)
    assert ring_bytes(10, 4, 1, 0) == 0


def _single(rank: int, world: int) -> tuple:
    x = torch.arange(5.0)
    return ring_allreduce(x), x.tolist()


def test_world_size_one_is_a_noop() -> None:
    assert launch(_single, 1, start_method="fork") == [(0, [0.0, 1.0, 2.0, 3.0, 4.0])]


def test_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        ring_allreduce(torch.zeros(3))
    with pytest.raises(ValueError, match="segment_bytes"):
        ring_allreduce(torch.zeros(3), segment_bytes=0)
    with pytest.raises(ValueError, match="algorithm"):
        RingAllReduce(algorithm="butterfly")


def _dies(rank: int, world: int) -> None:
    import os

    x = torch.ones(1000)
    ring_allreduce(x)  # a first round everyone completes
    if rank == 1:
        os._exit(3)
    ring_allreduce(x)


def test_dead_worker_fails_the_others_instead_of_hanging() -> None:
    # A hang would end in TimeoutError after the 10 s collective timeout; we want WorkerError.
    with pytest.raises(WorkerError) as info:
        launch(_dies, 3, start_method="fork", timeout_s=10, grace_s=12)
    fails = info.value.failures
    assert fails[1].startswith("died: exit code 3")
    assert set(fails) == {0, 1, 2}
    assert all(fails[r].startswith("err: ") for r in (0, 2)), fails
