"""Expert-parallel MoE over 2 gloo processes equals the single-process layer."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from capabilities.inference.moe import MoELayer
from capabilities.inference.moe_parallel import expert_slice, run_expert_parallel


def test_all_to_all_dispatch_equals_single_process_layer() -> None:
    # Top-2 with capacity 1.0 drops some assignments, so capacity handling is compared too.
    layer = MoELayer(8, 16, 4, k=2, capacity_factor=1.0, seed=0).eval()
    x = torch.randn(24, 8, generator=torch.Generator().manual_seed(1))
    ours = run_expert_parallel(layer, x, world_size=2, timeout_s=120)
    with torch.no_grad():
        shards = [layer(s) for s in x.chunk(2)]  # capacity is per shard, as on each rank
    reference = torch.cat([s.y for s in shards])
    assert sum(s.routing.dropped for s in shards) > 0
    assert torch.allclose(ours, reference, atol=1e-6)
    assert ours.abs().sum() > 0


def test_expert_parallel_bad_input() -> None:
    layer = MoELayer(4, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"num_experts \(3\) must be a multiple of world_size \(2\)"):
        run_expert_parallel(layer, torch.randn(4, 4), world_size=2)
    with pytest.raises(ValueError, match="T a multiple of world_size=3"):
        run_expert_parallel(layer, torch.randn(4, 4), world_size=3)
    with pytest.raises(ValueError, match="world_size must be an integer >= 1"):
        run_expert_parallel(layer, torch.randn(4, 4), world_size=0)
    assert expert_slice(8, 4, 3) == slice(6, 8)


def test_a_failing_rank_fails_the_run_and_every_process_is_torn_down() -> None:
    """The ranks run on launch's process group: one that raises fails the run, nothing is left behind."""
    from capabilities.inference.moe_parallel import _expert_parallel_rank, layer_kwargs
    from capabilities.training.launch import WorkerError, launch

    layer = MoELayer(4, 8, 2, seed=0).eval()
    state = {"kwargs": layer_kwargs(layer), "state": {"w_gate": torch.zeros(1)}}  # a state that does not load
    with pytest.raises(WorkerError, match="2 of 2 workers failed") as info:
        launch(_expert_parallel_rank, 2, state, torch.randn(4, 4), timeout_s=30, start_method="fork")
    assert all("state_dict" in why for why in info.value.failures.values())
    assert [p for p in multiprocessing.active_children() if p.name.startswith("agora-rank")] == []
