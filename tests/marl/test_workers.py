"""Copies stepped in worker processes: step_async/step_wait give exactly what step gives."""

from __future__ import annotations

import pytest
import torch

from marl.parallel_batch import ParallelBatch


def test_async_step_in_workers_equals_step_in_one_process() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = [torch.randint(0, 5, (4, 8), generator=gen) for _ in range(12)]
    local = ParallelBatch("sisl/pursuit-v5", 4, seed=1, max_cycles=5)
    remote = ParallelBatch("sisl/pursuit-v5", 4, seed=1, env_workers=2, max_cycles=5)
    try:
        assert torch.equal(local.reset(seed=1)[0], remote.reset(seed=1)[0])
        resets = 0
        for a in acts:  # max_cycles=5: copies finish and reset on the way
            want = local.step(a)
            remote.step_async(a)
            got = remote.step_wait()
            for x, y in zip(want[:4], got[:4], strict=True):
                assert torch.equal(x, y)
            for key in ("final_observation", "final_state", "done", "active"):
                assert torch.equal(want[4][key], got[4][key]), key
            assert torch.equal(local.state(), remote.state())
            resets += int(want[4]["done"].sum())
        assert resets == 8, "each of the 4 copies ends an episode of 5 steps twice in 12 steps"
    finally:
        local.close()
        remote.close()


@pytest.mark.parametrize("env_workers", [0, 1])
def test_async_step_out_of_order_is_refused(env_workers: int) -> None:
    batch = ParallelBatch("sisl/pursuit-v5", 2, env_workers=env_workers, max_cycles=5)
    try:
        batch.reset(seed=0)
        with pytest.raises(RuntimeError, match="without step_async"):
            batch.step_wait()
        batch.step_async(torch.zeros(2, 8, dtype=torch.long))
        with pytest.raises(RuntimeError, match="twice"):
            batch.step_async(torch.zeros(2, 8, dtype=torch.long))
        batch.step_wait()
        with pytest.raises(ValueError, match="2 rows"):
            batch.step(torch.zeros(3, 8, dtype=torch.long))
    finally:
        batch.close()
