"""The local process-group launcher: results by rank, clear failures, nothing left running."""

import multiprocessing as mp
import os
import time

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)
import torch.distributed as dist

from capabilities.training import WorkerError, launch


def _ranks(rank: int, world: int, offset: int) -> tuple:
    return rank + offset, dist.get_rank(), dist.get_world_size(), dist.get_backend()


def _raises(rank: int, world: int) -> None:
    if rank == 2:
        raise KeyError("boom on rank two")
    dist.barrier()


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie its parent has not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _reads_after_rank_0_exits(rank: int, world: int) -> str:
    # The rendezvous torch.distributed.rpc and init_process_group do: a store at MASTER_PORT.
    url = f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}?rank={rank}&world_size={world}"
    store, _, _ = next(dist.rendezvous(url))
    if rank == 0:
        store.set("pid0", str(os.getpid()))
        return "set"
    pid = int(store.get("pid0"))
    deadline = time.monotonic() + 30.0
    while not _gone(pid):
        assert time.monotonic() < deadline, "rank 0 did not exit"
        time.sleep(0.02)
    return store.get("pid0").decode()


def test_the_store_outlives_rank_0() -> None:
    # torch.distributed.rpc's graceful shutdown reads the store after rank 0 may have returned;
    # a store hosted by rank 0 vanished with it (Connection reset by peer on the others).
    out = launch(_reads_after_rank_0_exits, 3, init="none", start_method="fork", timeout_s=30)
    assert out[0] == "set" and out[1] == out[2] != "set"


def test_results_come_back_in_rank_order() -> None:
    assert launch(_ranks, 3, 10, start_method="fork") == [(10 + r, r, 3, "gloo") for r in range(3)]


def test_a_raising_worker_fails_the_group_and_everything_is_torn_down() -> None:
    with pytest.raises(WorkerError) as info:
        launch(_raises, 3, start_method="fork", timeout_s=10, grace_s=12)
    assert "KeyError: 'boom on rank two'" in info.value.failures[2]
    # Ranks 0 and 1 were blocked in a barrier with rank 2; they failed instead of hanging.
    assert set(info.value.failures) == {0, 1, 2}
    assert [p for p in mp.active_children() if p.name.startswith("agora-rank")] == []


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        launch(_ranks, 0)
    with pytest.raises(ValueError, match="start_method must be one of"):
        launch(_ranks, 1, start_method="thread")
    with pytest.raises(ValueError, match="backend must be 'gloo' or 'nccl'"):
        launch(_ranks, 1, backend="mpi")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'nccl' needs CUDA"):
            launch(_ranks, 1, backend="nccl")


def test_a_worker_that_cannot_start_raises_its_own_error() -> None:
    # A lambda cannot be pickled for a spawned/forkserver child: the start fails. The error
    # the user sees must be that one, not "can only join a started process" from the clean-up.
    import pickle

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)) as info:
        launch(_ranks, 2, lambda: 0, start_method="spawn", timeout_s=10)
    assert "can only join a started process" not in str(info.value)
    assert [p for p in mp.active_children() if p.name.startswith("agora-rank")] == []
