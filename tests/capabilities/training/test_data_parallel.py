"""Scale-out: the data-parallel gradient over N processes equals one process's whole-batch gradient."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)
from torch import nn

from capabilities.training import (
    DataParallel,
    RingAllReduce,
    data_parallel_gradient,
    launch,
    shard_bounds,
)
from capabilities.training.data_parallel import flat_grad
from envs.api import Agent, Communicator

BATCH = 10  # not a multiple of 3 or 4: uneven slices must be weighted right


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 2)).double()


def _batch(step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, 6, generator=g, dtype=torch.float64), torch.randn(BATCH, 2, generator=g, dtype=torch.float64)


def _single_process(steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference: one process, whole batch, plain autograd and SGD."""
    m = _model()
    x, y = _batch()
    nn.MSELoss()(m(x), y).backward()
    grad = flat_grad(m)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for t in range(steps):
        opt.zero_grad()
        x, y = _batch(t)
        nn.MSELoss()(m(x), y).backward()
        opt.step()
    return grad, [p.detach().clone() for p in m.parameters()]


class TorchAllReduce:
    """The reference communicator: torch.distributed's own all_reduce (gloo)."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(tensor)
        return tensor


def _train(communicator: Communicator, rank: int) -> list[torch.Tensor]:
    """Three data-parallel steps by an agent whose communicator is ``communicator``."""
    m = _model()
    agent = Agent(id=f"rank{rank}", capabilities=[communicator])
    dp = DataParallel(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.MSELoss(), agent.get(Communicator))
    for t in range(3):
        dp.step(*_batch(t))
    return [p.detach().clone() for p in m.parameters()]


def _dp(rank: int, world: int) -> tuple:
    m = _model()
    x, y = _batch()
    grad, _ = data_parallel_gradient(m, nn.MSELoss(), x, y)
    return grad, _train(RingAllReduce(), rank), _train(TorchAllReduce(), rank)


@pytest.mark.parametrize("world", [3, 4])
def test_data_parallel_gradient_equals_single_process(world: int) -> None:
    ref_grad, ref_params = _single_process(steps=3)
    outs = launch(_dp, world, start_method="fork", timeout_s=60)
    for grad, params, torch_params in outs:
        assert float((grad - ref_grad).abs().max()) <= 1e-12
        assert max(float((a - b).abs().max()) for a, b in zip(params, ref_params, strict=True)) <= 1e-12
        # Through the agent's ring communicator as through torch.distributed.all_reduce.
        assert max(float((a - b).abs().max()) for a, b in zip(params, torch_params, strict=True)) <= 1e-12
    # Every rank holds bit-identical parameters (the all-reduce hands everyone the same sum).
    for _, params, _ in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(params, outs[0][1], strict=True))


def test_data_parallel_refuses_a_communicator_without_all_reduce() -> None:
    m = _model()
    with pytest.raises(TypeError, match="communicator must have an all_reduce"):
        DataParallel(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.MSELoss(), communicator=object())


def test_shard_bounds_cover_the_batch() -> None:
    for total, world in [(10, 3), (10, 4), (8, 4), (3, 3)]:
        bounds = [shard_bounds(total, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        shard_bounds(10, 3, 3)


def _too_small(rank: int, world: int) -> None:
    data_parallel_gradient(_model(), nn.MSELoss(), *[t[:1] for t in _batch()])


def test_batch_smaller_than_world_is_refused() -> None:
    with pytest.raises(Exception, match="cannot be split over 2 ranks"):
        launch(_too_small, 2, start_method="fork", timeout_s=30)
