"""MoE routing: k gates per token, capacity, exact drop counts, the balancing loss, dispatch."""

from __future__ import annotations

import math

import pytest
import torch

from capabilities.inference.moe import (
    MoELayer,
    Routing,
    dense_all_experts,
    expert_capacity,
    load_balancing_loss,
    per_expert_loop,
    route,
)


def _logits(tokens: int, experts: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed))


def _drops_by_hand(index: torch.Tensor, capacity: int, experts: int) -> tuple[int, list[list[bool]]]:
    """Plain-Python reference: first choices in token order, then second choices, and so on."""
    used = [0] * experts
    kept = [[False] * index.shape[1] for _ in range(index.shape[0])]
    dropped = 0
    for r in range(index.shape[1]):
        for t in range(index.shape[0]):
            e = int(index[t, r])
            if used[e] < capacity:
                used[e] += 1
                kept[t][r] = True
            else:
                dropped += 1
    return dropped, kept


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exactly_k_nonzero_gates_per_token(k: int) -> None:
    layer = MoELayer(8, 16, 6, k=k, capacity_factor=None, seed=1).train()
    routing = layer.route(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)))
    gates = routing.dense_gates()
    assert torch.equal((gates != 0).sum(dim=1), torch.full((50,), k))
    assert torch.allclose(gates.sum(dim=1), torch.ones(50, dtype=gates.dtype))  # softmax over the k kept
    # The k kept are the top k of the (noisy) logits: no unchosen gate beats a chosen one.
    assert len(set(routing.expert_index[0].tolist())) == k


def test_noise_is_seeded_and_only_while_training() -> None:
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(5))
    a = MoELayer(8, 16, 4, k=2, seed=3).train()
    b = MoELayer(8, 16, 4, k=2, seed=3).train()
    assert torch.equal(a.router_logits(x), b.router_logits(x))
    assert not torch.equal(a.router_logits(x), x @ a.w_gate)
    assert torch.equal(a.eval().router_logits(x), x @ a.w_gate)


@pytest.mark.parametrize("k,capacity", [(1, 3), (2, 4), (2, 1), (3, 7)])
def test_capacity_and_drops_are_exact(k: int, capacity: int) -> None:
    logits = _logits(40, 5, seed=k * 10 + capacity)
    routing = route(logits, k, capacity)
    load = routing.load()
    assert int(load.max()) <= capacity
    dropped, kept = _drops_by_hand(routing.expert_index, capacity, 5)
    assert routing.dropped == dropped > 0
    assert routing.kept.tolist() == kept
    assert int(load.sum()) + dropped == 40 * k
    # Kept slots of an expert are 0..load-1, each used once.
    for e in range(5):
        slots = routing.position[(routing.expert_index == e) & routing.kept]
        assert sorted(slots.tolist()) == list(range(int(load[e])))


def test_switch_capacity_formula_and_gate() -> None:
    layer = MoELayer(8, 16, 4, router="switch", capacity_factor=1.25, seed=0).eval()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    out = layer(x)
    assert out.routing.capacity == math.floor(1.25 * 32 / 4) == 10
    probs = torch.softmax(x @ layer.w_gate, dim=-1)
    assert torch.allclose(out.routing.gates[:, 0], probs.max(dim=-1).values)
    # A dropped token's output is exactly zero (it keeps only its residual path outside).
    dropped_tokens = ~out.routing.kept[:, 0]
    assert torch.equal(out.y[dropped_tokens], torch.zeros_like(out.y[dropped_tokens]))


def test_load_balancing_loss_is_alpha_at_uniform_routing() -> None:
    experts, tokens, alpha = 4, 8, 0.01
    # Uniform probabilities, and each expert is the first choice of exactly 2 tokens.
    index = torch.arange(tokens).remainder(experts)[:, None]
    probs = torch.full((tokens, experts), 1 / experts, dtype=torch.float64)
    uniform = Routing(index, torch.ones(tokens, 1), torch.zeros(tokens, 1, dtype=torch.long),
                      torch.ones(tokens, 1, dtype=torch.bool), probs, tokens)
    assert load_balancing_loss(uniform, alpha).item() == pytest.approx(alpha, rel=1e-12)
    # Collapse: every token to expert 0 with probability 1 gives alpha * N, its maximum.
    collapsed = Routing(torch.zeros(tokens, 1, dtype=torch.long), torch.ones(tokens, 1),
                        torch.zeros(tokens, 1, dtype=torch.long), torch.ones(tokens, 1, dtype=torch.bool),
                        torch.nn.functional.one_hot(torch.zeros(tokens, dtype=torch.long), experts).float(), tokens)
    assert load_balancing_loss(collapsed, alpha).item() == pytest.approx(alpha * experts)


def test_layer_with_uniform_router_has_loss_alpha() -> None:
    layer = MoELayer(4, 8, 8, router="switch", capacity_factor=None, alpha=0.3, seed=0).eval()
    with torch.no_grad():
        layer.w_gate.zero_()  # every router probability is 1/8
    out = layer(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))
    assert out.aux_loss.item() == pytest.approx(0.3, rel=1e-6)


def test_balancing_loss_gradient_pushes_probability_off_the_overloaded_expert() -> None:
    layer = MoELayer(4, 8, 4, router="switch", capacity_factor=None, alpha=1.0, seed=0).eval()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    out = layer(x)
    out.aux_loss.backward()
    busiest = int(out.routing.load().argmax())
    before = torch.softmax(x @ layer.w_gate, dim=-1)[:, busiest].mean()
    with torch.no_grad():
        layer.w_gate -= 0.1 * layer.w_gate.grad
    after = torch.softmax(x @ layer.w_gate, dim=-1)[:, busiest].mean()
    assert after < before


@pytest.mark.parametrize("k,cf", [(1, 1.0), (2, 1.25), (2, None)])
def test_batched_dispatch_equals_reference_loops(k: int, cf: float | None) -> None:
    layer = MoELayer(8, 16, 6, k=k, capacity_factor=cf, seed=4).eval()
    x = torch.randn(36, 8, generator=torch.Generator().manual_seed(3))
    out = layer(x)
    with torch.no_grad():
        assert torch.allclose(out.y, per_expert_loop(layer, x, out.routing), atol=1e-5)
        assert torch.allclose(out.y, dense_all_experts(layer, x, out.routing), atol=1e-5)
    assert out.y.abs().sum() > 0


def test_layer_trains_end_to_end() -> None:
    layer = MoELayer(4, 8, 2, k=1, seed=0)
    out = layer(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)))
    assert out.y.shape == (3, 5, 4)
    (out.y.square().mean() + out.aux_loss).backward()
    assert all(p.grad is not None for p in (layer.w_gate, layer.w1, layer.w2))


# ---- bad input ------------------------------------------------------------------------------

def test_more_experts_than_tokens_allow_for() -> None:
    with pytest.raises(ValueError, match=r"num_experts=64 is more than 16 tokens allow for.*num_experts <= 20"):
        expert_capacity(16, 64, 1.25, k=1)
    layer = MoELayer(4, 8, 64, k=1, capacity_factor=1.0)
    with pytest.raises(ValueError, match="num_experts=64"):
        layer(torch.randn(8, 4))
    assert expert_capacity(16, 64, None) == 16  # no capacity limit: allowed


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 5}, "k must be between 1 and num_experts=4"),
    ({"k": 0}, "k must be between 1"),
    ({"num_experts": 0}, "num_experts must be an integer >= 1"),
    ({"capacity_factor": 0.0}, "capacity_factor must be > 0"),
    ({"router": "hash"}, "router must be 'noisy_topk' or 'switch'"),
    ({"router": "switch", "k": 2}, "k must be 1"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
])
def test_bad_layer_arguments(kwargs: dict, match: str) -> None:
    args = dict(d_model=4, d_ff=8, num_experts=4) | kwargs
    with pytest.raises(ValueError, match=match):
        MoELayer(**args)


def test_wrong_token_width() -> None:
    with pytest.raises(ValueError, match="d_model=4"):
        MoELayer(4, 8, 2)(torch.randn(3, 5))
