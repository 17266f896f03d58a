"""Parameter server on torch.distributed.rpc: BSP is synchronous SGD, SSP keeps its bound."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported once here so forked workers do not each import it)

from capabilities.training import LeastSquares, PSConfig, run_parameter_server, sync_sgd_update


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
    with pytest.raises(ValueError, match="mode must be one of"):
        PSConfig(mode="gossip").validate()
    with pytest.raises(ValueError, match="staleness must be an int >= 0"):
        PSConfig(mode="ssp", staleness=-1).validate()
