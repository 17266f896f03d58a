"""Scale-out: data-parallel gradients over N processes, equal to one machine's on the whole batch.

Each rank takes a contiguous slice of the global batch, computes the gradient of its slice's
share of the global loss (slice loss times slice size over global size, so uneven slices are
weighted right), and the ranks sum their gradients with one all-reduce of the flattened
gradient (the ring by default). The sum is the gradient of the mean loss over the whole
batch: exactly the gradient a single process would compute, up to the order of additions.

:class:`DataParallel` is the training loop an agent runs with its
:class:`envs.api.Communicator` (the ring all-reduce by default, or any other): the sum over
ranks goes through ``communicator.all_reduce``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from capabilities.training.ring_allreduce import ring_allreduce


def shard_bounds(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The slice ``[start, end)`` of a global batch that ``rank`` of ``world_size`` takes.

    The first ``batch_size % world_size`` ranks take one more example.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}")
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients of ``model`` concatenated (zeros where a gradient is missing)."""
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()
    ])


def set_flat_grad(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Writes a flat gradient back into ``model``'s ``.grad`` fields."""
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def data_parallel_gradient(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    group: Any = None,
    allreduce: Callable[[torch.Tensor, Any], Any] = ring_allreduce,
) -> tuple[torch.Tensor, float]:
    """Computes the gradient of the mean loss over the global batch, split across ranks.

    Every rank passes the same global ``inputs``/``targets`` (or at least the same batch size)
    and uses its own slice. Afterwards every rank's ``model`` has the summed gradient in
    ``.grad``.

    Args:
        model: This rank's replica (identical parameters on every rank).
        loss_fn: ``loss_fn(outputs, targets)`` returning the *mean* loss over its examples.
        inputs: The global batch's inputs (leading dimension = batch).
        targets: The global batch's targets.
        group: Process group; None for the default group.
        allreduce: ``allreduce(tensor, group)`` summing in place. Default :func:`ring_allreduce`.

    Returns:
        The flat summed gradient and the global mean loss.
    """
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    total = inputs.shape[0]
    if total < world:
        raise ValueError(f"global batch of {total} examples cannot be split over {world} ranks (need >= {world})")
    a, b = shard_bounds(total, rank, world)
    model.zero_grad(set_to_none=True)
    # Weight the slice's mean loss by its share of the batch, so the sum over ranks is the
    # global mean even when slices differ in size.
    loss = loss_fn(model(inputs[a:b]), targets[a:b]) * ((b - a) / total)
    loss.backward()
    grad = flat_grad(model)
    stats = torch.cat([grad, loss.detach().reshape(1).to(grad.dtype)])
    if world > 1:
        allreduce(stats, group)
    set_flat_grad(model, stats[:-1])
    return stats[:-1], float(stats[-1])


class DataParallel:
    """Synchronous data-parallel SGD whose gradient sum goes through an agent's communicator.

    Usage on every rank: ``DataParallel(model, opt, loss_fn, agent.get(Communicator)).step(x, y)``.

    Args:
        model: This rank's replica; parameters are broadcast from rank 0 at construction.
        optimizer: Any torch optimizer over ``model``'s parameters.
        loss_fn: Mean loss ``loss_fn(outputs, targets)``.
        communicator: An :class:`envs.api.Communicator` whose ``all_reduce`` sums a tensor over
            the ranks in place (it must sum, not average). Default a ring all-reduce over ``group``.
        group: Process group of the broadcast and the default communicator; None for the default group.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], communicator: Any = None,
                 group: Any = None) -> None:
        from capabilities.training.ring_allreduce import RingAllReduce

        self.model, self.optimizer, self.loss_fn, self.group = model, optimizer, loss_fn, group
        self.communicator = communicator if communicator is not None else RingAllReduce(group)
        if not callable(getattr(self.communicator, "all_reduce", None)):
            raise TypeError(f"communicator must have an all_reduce(tensor) method (an envs.api.Communicator), "
                            f"got {type(communicator).__name__}")
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            src = dist.get_global_rank(group, 0) if group is not None else 0
            for p in model.parameters():
                dist.broadcast(p.data, src, group=group)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One synchronous step on the global batch; returns its mean loss."""
        _, loss = data_parallel_gradient(self.model, self.loss_fn, inputs, targets, self.group,
                                         allreduce=lambda t, _group: self.communicator.all_reduce(t))
        self.optimizer.step()
        return loss
