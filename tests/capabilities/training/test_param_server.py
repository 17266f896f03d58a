"""Parameter server on torch.distributed.rpc: BSP is synchronous SGD, SSP keeps its bound, a dead
worker fails the run."""

import os

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)

from capabilities.training import (
    MODES,
    LeastSquares,
    PSConfig,
    WorkerError,
    run_parameter_server,
    sync_sgd_update,
)


def test_bsp_equals_synchronous_sgd_exactly() -> None:
    task = LeastSquares(dim=10, examples_per_worker=16, seed=3)
    cfg = PSConfig(mode="bsp", num_servers=3, num_workers=3, steps=6, lr=0.2, straggler_delay_s=0.01)
    res = run_parameter_server(cfg, task, start_method="fork")
    # Reference: one process, W gradients per step, averaged in worker order.
    data = [task.data(w, 3) for w in range(3)]
    p = task.init()
    for _ in range(6):
        p = sync_sgd_update(p, [task.grad(p, x, y) for x, y in data], 0.2)
    assert torch.equal(res.params, p)
    assert not torch.equal(p, task.init())
    assert res.extra["rounds"] == [6, 6, 6]
    assert len(res.curve) == 1 + 3 * 6  # one update per round per shard
    assert max(res.pull_gaps) == 0


@pytest.mark.parametrize("staleness", [0, 2])
def test_ssp_never_exceeds_its_bound(staleness: int) -> None:
    # Worker 0 sleeps 0.1 s per clock; the others would race ahead without the bound.
    cfg = PSConfig(mode="ssp", staleness=staleness, num_servers=2, num_workers=3, steps=6,
                   lr=0.1, straggler_delay_s=0.1)
    res = run_parameter_server(cfg, LeastSquares(dim=8, examples_per_worker=8), start_method="fork")
    assert max(res.pull_gaps) <= staleness
    # The fast workers did run into the bound, so the check above was exercised.
    assert max(res.pull_gaps) == staleness
    # Every push was applied at once: W * steps updates per shard.
    assert len(res.curve) == 1 + 2 * 3 * 6


def test_bad_config_is_named() -> None:
    with pytest.raises(ValueError, match=r"mode\n  Input should be 'bsp', 'ssp' or 'async'"):
        PSConfig(mode="gossip")
    with pytest.raises(ValueError, match=r"staleness\n  Input should be greater than or equal to 0"):
        PSConfig(mode="ssp", staleness=-1)


class _DiesAtStep(LeastSquares):
    """The least-squares task, except that one worker's process exits during a gradient."""

    def __init__(self, rank: int, step: int, **kw) -> None:
        super().__init__(**kw)
        self.rank, self.step, self.calls = rank, step, 0

    def grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if int(os.environ["RANK"]) == self.rank and self.calls == self.step:
            os._exit(3)  # no exception, no cleanup: the process is simply gone
        return super().grad(params, x, y)


@pytest.mark.parametrize("mode", MODES)
def test_dead_worker_fails_the_run_instead_of_hanging(mode: str) -> None:
    # Rank 3 is worker 1 (ranks 0, 1 are the servers); it dies in its third step. In BSP and SSP
    # the others would wait for its push forever, in async for its part of the final RPC
    # shutdown. A hang would end with TimeoutError, or with the survivors reported as "killed"
    # after the launcher's grace period, not with the servers' error on every other rank.
    cfg = PSConfig(mode=mode, staleness=1, num_servers=2, num_workers=3, steps=6, lr=0.1, timeout_s=30.0)
    with pytest.raises(WorkerError) as info:
        run_parameter_server(cfg, _DiesAtStep(3, 3, dim=8, examples_per_worker=8), start_method="fork")
    fails = info.value.failures
    assert fails[3].startswith("died: exit code 3")
    assert set(fails) == {0, 1, 2, 3, 4}, fails
    for rank in (0, 1, 2, 4):
        assert fails[rank].startswith("err: RuntimeError: parameter server ps"), fails[rank]
        assert "worker 1 (worker1) stopped answering after 2 of 6 pushes" in fails[rank], fails[rank]


class _HangsAtStep(LeastSquares):
    """The least-squares task, except that one worker's process stops (SIGSTOP) during a gradient."""

    def __init__(self, rank: int, step: int, **kw) -> None:
        super().__init__(**kw)
        self.rank, self.step, self.calls = rank, step, 0

    def grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import signal

        self.calls += 1
        if int(os.environ["RANK"]) == self.rank and self.calls == self.step:
            os.kill(os.getpid(), signal.SIGSTOP)  # hung: alive, answering nothing, not even pings
        return super().grad(params, x, y)


def test_hung_worker_is_named_not_whoever_waits_on_it() -> None:
    # Worker 1 (rank 3) stops in its third step. Its pings go unanswered, so the servers name it
    # after ping_timeout_s; before, every rank waited for the 30 s RPC timeout and the report
    # blamed worker 0, whose pull timed out first.
    cfg = PSConfig(mode="bsp", num_servers=2, num_workers=3, steps=6, lr=0.1, timeout_s=30.0, ping_timeout_s=2.0)
    with pytest.raises(WorkerError) as info:
        run_parameter_server(cfg, _HangsAtStep(3, 3, dim=8, examples_per_worker=8), start_method="fork")
    fails = info.value.failures
    assert "worker 1 (worker1) stopped answering after 2 of 6 pushes" in str(info.value), str(info.value)
    assert not fails[3].startswith("err"), fails[3]  # the stopped process reports nothing; it is killed
    for rank in (0, 1):  # the servers name worker 1, never worker 0
        assert "worker 1 (worker1) stopped answering" in fails[rank], fails[rank]
        assert "worker 0" not in fails[rank], fails[rank]
