"""Expert parallelism: experts live on different processes; tokens travel by all-to-all.

With ``W`` processes and ``E`` experts, rank ``r`` holds experts ``r*E/W .. (r+1)*E/W - 1``
and its own shard of the tokens. One forward pass (GShard, Lepikhin et al. 2020):

1. route the local tokens and scatter them into ``[E, C, d]`` buffers (as in one process);
2. **all-to-all**: slice ``r`` of every rank's buffers (the tokens bound for rank ``r``'s
   experts) goes to rank ``r`` -- the MapReduce shuffle again, keyed by expert;
3. each rank runs its experts on everything it received, batched;
4. **all-to-all** back, then combine with the gates locally.

The capacity is per shard (each rank's tokens compete only with each other for slots), so the
result equals the single-process :class:`~capabilities.inference.moe.MoELayer` applied to
each shard. Processes are started, joined and torn down by
:func:`capabilities.training.launch.launch` (gloo on 127.0.0.1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from capabilities.inference.moe import (
    MoELayer,
    apply_experts,
    combine,
    dispatch,
    expert_capacity,
    route,
)


def expert_slice(num_experts: int, world_size: int, rank: int) -> slice:
    """The experts rank ``rank`` holds.

    Raises:
        ValueError: ``num_experts`` is not a multiple of ``world_size``.
    """
    if world_size < 1 or num_experts % world_size:
        raise ValueError(f"num_experts ({num_experts}) must be a multiple of world_size ({world_size})")
    per = num_experts // world_size
    return slice(rank * per, (rank + 1) * per)


class ExpertParallelMoE:
    """One rank's part of an expert-parallel MoE layer.

    Args:
        layer: A layer whose router weights are replicated; only the experts of this rank are
            kept (copied out of ``layer``).
        rank: This process's rank.
        world_size: Processes in the group.
        group: The process group. Default the world group.
    """

    def __init__(self, layer: MoELayer, rank: int, world_size: int, group: Any = None) -> None:
        self.local = expert_slice(layer.num_experts, world_size, rank)
        self.rank, self.world_size, self.group = rank, world_size, group
        self.num_experts, self.k = layer.num_experts, layer.k
        self.capacity_factor, self.switch = layer.capacity_factor, layer.router == "switch"
        with torch.no_grad():
            self.w_gate = layer.w_gate.detach().clone()
            self.w1, self.b1, self.w2, self.b2 = (p[self.local].detach().clone()
                                                  for p in (layer.w1, layer.b1, layer.w2, layer.b2))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's output for its tokens ``[T, d]`` (all ranks call it together, equal T).

        The router runs without noise (inference).
        """
        w, per = self.world_size, self.num_experts // self.world_size
        cap = expert_capacity(x.shape[0], self.num_experts, self.capacity_factor, self.k)
        routing = route(x @ self.w_gate, self.k, cap, switch_gates=self.switch)
        send = dispatch(x, routing).contiguous()  # [E, C, d]: rank-major blocks of `per` experts
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        # recv[s*per + j] holds source rank s's tokens for local expert j.
        d = x.shape[-1]
        mine = recv.view(w, per, cap, d).transpose(0, 1).reshape(per, w * cap, d)
        out = apply_experts(mine, self.w1, self.b1, self.w2, self.b2)
        back_send = out.view(per, w, cap, d).transpose(0, 1).reshape(w * per, cap, d).contiguous()
        back = torch.empty_like(back_send)
        dist.all_to_all_single(back, back_send, group=self.group)
        return combine(back, routing)


def _expert_parallel_rank(rank: int, world_size: int, layer_state: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """One rank of :func:`run_expert_parallel`, inside the launched process group."""
    layer = MoELayer(**layer_state["kwargs"])
    layer.load_state_dict(layer_state["state"])
    return ExpertParallelMoE(layer, rank, world_size).forward(x.chunk(world_size)[rank])


def layer_kwargs(layer: MoELayer) -> dict[str, Any]:
    """Constructor arguments that rebuild ``layer``'s shape and routing in another process."""
    return dict(d_model=layer.d_model, d_ff=layer.w1.shape[-1], num_experts=layer.num_experts, k=layer.k,
                capacity_factor=layer.capacity_factor, router=layer.router, noise=layer.noise, alpha=layer.alpha)


def run_expert_parallel(layer: MoELayer, x: torch.Tensor, world_size: int = 2, *,
                        timeout_s: float = 120.0) -> torch.Tensor:
    """Runs ``layer`` expert-parallel over ``world_size`` local processes on tokens ``x``.

    The tokens are split into ``world_size`` equal shards, one per rank, on processes of
    :func:`~capabilities.training.launch.launch`, which tears every one down on failure or timeout.

    Args:
        layer: The layer (its router and expert weights are sent to the workers).
        x: Tokens ``[T, d]``, ``T`` a multiple of ``world_size``.
        world_size: Processes (>= 1, divides ``num_experts``). Default 2.
        timeout_s: The collectives' timeout and the run's deadline (plus start-up). Default 120.

    Returns:
        ``[T, d]``: each shard's output, in order.

    Raises:
        ValueError: for a bad argument.
        capabilities.training.launch.WorkerError: a rank failed (the message names each rank's fate).
        TimeoutError: the run passed its deadline; every process was killed.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    expert_slice(layer.num_experts, world_size, 0)
    if x.dim() != 2 or x.shape[0] % world_size:
        raise ValueError(f"x must be [T, d] with T a multiple of world_size={world_size}, got shape {tuple(x.shape)}")
    from capabilities.training.launch import launch

    state = {"kwargs": layer_kwargs(layer), "state": {k: v.detach().clone() for k, v in layer.state_dict().items()}}
    outputs = launch(_expert_parallel_rank, world_size, state, x.detach().clone(), timeout_s=timeout_s)
    return torch.cat(outputs)
