"""The local process-group launcher: results by rank, clear failures, nothing left running."""

import multiprocessing as mp

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
