"""Mixture-of-experts routing: noisy top-k gating, Switch top-1 with capacity, load balancing.

* Noisy top-k gating (Shazeer et al., 2017, "Outrageously Large Neural Networks"):
  ``H(x) = x W_g + eps * softplus(x W_noise)`` with ``eps ~ N(0, 1)`` while training; keep the
  ``k`` largest entries of ``H(x)`` and softmax over them, so every token has exactly ``k``
  non-zero gates.
* Switch routing (Fedus et al., 2021): ``k = 1`` and the gate is the router probability
  ``p_i(x)`` of the chosen expert. Each expert takes at most
  ``capacity = floor(capacity_factor * k * tokens / num_experts)`` tokens; assignments past it
  are *dropped* (the token skips the expert and keeps only its residual path).
* The load-balancing loss ``alpha * N * sum_i f_i * P_i``, with ``f_i`` the fraction of tokens
  whose first choice is expert ``i`` and ``P_i`` the mean router probability of ``i``. It is
  ``alpha`` at perfectly uniform routing and grows as routing concentrates.

The functions are pure (tensors in, tensors out) so the expert-parallel version in
:mod:`capabilities.inference.moe_parallel` reuses them across processes; :class:`MoELayer`
is the ``nn.Module`` that holds the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Routing:
    """Where each token goes.

    Attributes:
        expert_index: ``[T, k]`` chosen experts, best first.
        gates: ``[T, k]`` combine weights of the chosen experts (all > 0).
        position: ``[T, k]`` slot of the token in its expert's buffer (meaningful where kept).
        kept: ``[T, k]`` whether the assignment fits in the expert's capacity.
        router_probs: ``[T, E]`` softmax of the router logits (for the balancing loss).
        capacity: Slots per expert.
    """

    expert_index: torch.Tensor
    gates: torch.Tensor
    position: torch.Tensor
    kept: torch.Tensor
    router_probs: torch.Tensor
    capacity: int

    @property
    def num_experts(self) -> int:
        return self.router_probs.shape[-1]

    @property
    def dropped(self) -> int:
        """Token-to-expert assignments that did not fit (a top-k token counts once per drop)."""
        return int((~self.kept).sum())

    def load(self) -> torch.Tensor:
        """``[E]`` assignments each expert actually processes (kept ones)."""
        return torch.bincount(self.expert_index[self.kept], minlength=self.num_experts)

    def dense_gates(self) -> torch.Tensor:
        """``[T, E]`` gate matrix G(x): the k chosen entries per row, zeros elsewhere."""
        g = torch.zeros_like(self.router_probs)
        return g.scatter(1, self.expert_index, self.gates)


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float | None, k: int = 1) -> int:
    """Slots per expert: ``floor(capacity_factor * k * num_tokens / num_experts)``.

    ``capacity_factor=None`` means no limit (``num_tokens`` slots, nothing is ever dropped).

    Raises:
        ValueError: Naming ``num_experts`` when so many experts leave each one less than one
            slot (every token would be dropped), or a non-positive ``capacity_factor``.
    """
    if capacity_factor is None:
        return num_tokens
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor!r}")
    capacity = math.floor(capacity_factor * k * num_tokens / num_experts)
    if capacity < 1:
        most = math.floor(capacity_factor * k * num_tokens)
        raise ValueError(
            f"num_experts={num_experts} is more than {num_tokens} tokens allow for with k={k} and "
            f"capacity_factor={capacity_factor}: each expert would get {capacity} slots; use num_experts <= "
            f"{most}, more tokens per batch, or a larger capacity_factor")
    return capacity


def route(logits: torch.Tensor, k: int, capacity: int, *, switch_gates: bool = False) -> Routing:
    """Top-k routing with a capacity limit.

    Args:
        logits: ``[T, E]`` router logits (already noisy if noise is wanted).
        k: Experts per token, ``1 <= k <= E``.
        capacity: Slots per expert (>= 1).
        switch_gates: Gate = router probability of the chosen expert (Switch) instead of a
            softmax over the k kept logits (Shazeer). Default False.

    Returns:
        The routing. Assignments fill capacity in priority order: all first choices (token
        order) before any second choice, as in GShard, so a token loses its second expert
        before another token loses its first.
    """
    num_tokens, num_experts = logits.shape
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    probs = torch.softmax(logits, dim=-1)
    top_logits, index = logits.topk(k, dim=-1)
    gates = probs.gather(1, index) if switch_gates else torch.softmax(top_logits, dim=-1)
    # Rank-major order: row r*T + t is choice r of token t.
    onehot = F.one_hot(index.t().reshape(-1), num_experts)
    position = ((onehot.cumsum(0) - 1) * onehot).sum(-1).reshape(k, num_tokens).t()
    return Routing(index, gates, position, position < capacity, probs, capacity)


def load_balancing_loss(routing: Routing, alpha: float) -> torch.Tensor:
    """``alpha * N * sum_i f_i * P_i`` (Switch Transformer, eq. 4).

    ``f_i`` is the fraction of tokens whose first choice is expert ``i`` (counted before any
    drop) and ``P_i`` the mean router probability of ``i``. Only ``P`` carries a gradient.
    """
    num_experts = routing.num_experts
    first = routing.expert_index[:, 0]
    f = torch.bincount(first, minlength=num_experts).to(routing.router_probs.dtype) / first.numel()
    p = routing.router_probs.mean(dim=0)
    return alpha * num_experts * torch.sum(f * p)


def dispatch(x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Scatters tokens ``[T, d]`` into per-expert buffers ``[E, capacity, d]`` (zeros where empty)."""
    num_experts, cap = routing.num_experts, routing.capacity
    buf = x.new_zeros((num_experts * cap, x.shape[-1]))
    token = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(routing.expert_index)
    kept = routing.kept
    slot = routing.expert_index[kept] * cap + routing.position[kept]
    buf = buf.index_copy(0, slot, x[token[kept]])
    return buf.view(num_experts, cap, x.shape[-1])


def combine(expert_out: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Gathers ``[E, capacity, d]`` back to tokens, weighted by their gates: ``[T, d]``.

    A dropped assignment contributes zero.
    """
    num_experts, cap, d = expert_out.shape
    flat = expert_out.reshape(num_experts * cap, d)
    slot = (routing.expert_index * cap + routing.position.clamp(max=cap - 1)).reshape(-1)
    picked = flat[slot].view(*routing.expert_index.shape, d)
    weight = (routing.gates * routing.kept).unsqueeze(-1)
    return (picked * weight).sum(dim=1)


def apply_experts(buf: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor) -> torch.Tensor:
    """Each expert's two-layer ReLU MLP on its own buffer, batched: ``[E, C, d] -> [E, C, d]``."""
    h = torch.relu(torch.baddbmm(b1.unsqueeze(1), buf, w1))
    return torch.baddbmm(b2.unsqueeze(1), h, w2)


@dataclass
class MoEOutput:
    """What :class:`MoELayer` returns: ``y`` ``[..., d]``, the balancing loss and the routing."""

    y: torch.Tensor
    aux_loss: torch.Tensor
    routing: Routing


class MoELayer(nn.Module):
    """A mixture-of-experts feed-forward layer (noisy top-k or Switch routing).

    Args:
        d_model: Token width.
        d_ff: Hidden width of each expert.
        num_experts: Experts (>= 1).
        k: Experts per token (1 <= k <= num_experts). Default 1.
        capacity_factor: Capacity multiplier (> 0), or None for no capacity limit. Default 1.25.
        router: "noisy_topk" (softmax over the k kept noisy logits) or "switch" (gate = router
            probability; k must be 1). Default "noisy_topk".
        noise: Add the trainable Gaussian noise of Shazeer et al. while training. Default True.
        alpha: Weight of the load-balancing loss (>= 0). Default 0.01.
        seed: Seed of the initialization and of the gate noise (the layer owns both
            generators). Default 0.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, *, k: int = 1,
                 capacity_factor: float | None = 1.25, router: str = "noisy_topk", noise: bool = True,
                 alpha: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        for key, value in (("d_model", d_model), ("d_ff", d_ff), ("num_experts", num_experts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
        if router not in ("noisy_topk", "switch"):
            raise ValueError(f"router must be 'noisy_topk' or 'switch', got {router!r}")
        if router == "switch" and k != 1:
            raise ValueError(f"router='switch' routes each token to one expert; k must be 1, got {k}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor!r}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.d_model, self.num_experts, self.k = d_model, num_experts, k
        self.capacity_factor, self.router, self.noise, self.alpha = capacity_factor, router, noise, alpha
        gen = torch.Generator().manual_seed(seed)
        self.w_gate = nn.Parameter(torch.randn(d_model, num_experts, generator=gen) / d_model**0.5)
        # Shazeer et al. start the noise weights at zero: noise std softplus(0) ~ 0.69 everywhere.
        self.w_noise = nn.Parameter(torch.zeros(d_model, num_experts))
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_ff, generator=gen) / d_model**0.5)
        self.b1 = nn.Parameter(torch.zeros(num_experts, d_ff))
        self.w2 = nn.Parameter(torch.randn(num_experts, d_ff, d_model, generator=gen) / d_ff**0.5)
        self.b2 = nn.Parameter(torch.zeros(num_experts, d_model))
        self._noise_gen = torch.Generator().manual_seed(seed + 1)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, E]`` logits; with Gaussian noise scaled by softplus(x W_noise) when training."""
        clean = x @ self.w_gate
        if not (self.training and self.noise):
            return clean
        eps = torch.randn(clean.shape, generator=self._noise_gen).to(clean)
        return clean + eps * F.softplus(x @ self.w_noise)

    def route(self, x: torch.Tensor) -> Routing:
        """Routing of tokens ``[T, d]``."""
        cap = expert_capacity(x.shape[0], self.num_experts, self.capacity_factor, self.k)
        return route(self.router_logits(x), self.k, cap, switch_gates=self.router == "switch")

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """Routes, dispatches, runs the experts batched and combines: tokens ``[..., d]``."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must have last dimension d_model={self.d_model}, got shape {tuple(x.shape)}")
        flat = x.reshape(-1, self.d_model)
        routing = self.route(flat)
        out = apply_experts(dispatch(flat, routing), self.w1, self.b1, self.w2, self.b2)
        y = combine(out, routing).view_as(x)
        return MoEOutput(y, load_balancing_loss(routing, self.alpha), routing)


def per_expert_loop(layer: MoELayer, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Reference combine: one Python loop over experts, each on the tokens it kept.

    Args:
        layer: Supplies the expert weights.
        x: Tokens ``[T, d]``.
        routing: The routing to follow (same kept set and gates as the batched path).
    """
    y = torch.zeros_like(x)
    for e in range(layer.num_experts):
        hit = (routing.expert_index == e) & routing.kept
        tok, choice = hit.nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = torch.relu(x[tok] @ layer.w1[e] + layer.b1[e])
        y = y.index_add(0, tok, (h @ layer.w2[e] + layer.b2[e]) * routing.gates[tok, choice].unsqueeze(-1))
    return y


def dense_all_experts(layer: MoELayer, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Reference without dispatch: every expert on every token, masked by the kept gates."""
    h = torch.relu(torch.einsum("td,edf->etf", x, layer.w1) + layer.b1[:, None])
    out = torch.einsum("etf,efd->etd", h, layer.w2) + layer.b2[:, None]  # [E, T, d]
    gates = torch.zeros_like(routing.router_probs).scatter(1, routing.expert_index, routing.gates * routing.kept)
    return torch.einsum("te,etd->td", gates, out)
