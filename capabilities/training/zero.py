"""Sharded data parallelism: ZeRO stages 1, 2 and 3 (Rajbhandari et al. 2020) on collectives.

Every parameter is flattened and padded to a multiple of N; rank r owns the r-th of N equal
pieces (per-parameter sharding, as FSDP2 does along dim 0). An elementwise optimizer (Adam,
AdamW, SGD) runs only on the owned pieces, so its state is sharded in every stage.

* Stage 1 (optimizer state): full parameters and full gradients on every rank. After the
  backward pass each gradient is reduce-scattered in place; each rank steps its piece, then
  the pieces are all-gathered back into the full parameters.
* Stage 2 (+ gradients): a hook on each parameter reduce-scatters its gradient as soon as
  autograd has accumulated it and drops the full gradient, so only the owned gradient pieces
  persist.
* Stage 3 (+ parameters): the full parameters are freed; a module's parameters are
  all-gathered just before its forward, freed right after it, gathered again just before its
  backward (a hook on its outputs' gradients) and freed once their gradient is reduced.

Model-state bytes per rank, P parameters, N ranks (the paper's Figure 1 accounting):
mixed precision with Adam stores 2P of fp16 parameters, 2P of fp16 gradients and K = 12 bytes
per parameter of optimizer state (fp32 master copy, momentum, variance). In pure fp32 the
parameters are the master copy, so 4P + 4P and K = 8 (momentum and variance); in fp64, 8P + 8P
and K = 16. With e bytes per element and K = 2e:

    plain DP  (2e + K) P
    stage 1   2e P + K P / N
    stage 2   e P + (e + K) P / N
    stage 3   (2e + K) P / N

Measured bytes exceed these only by the padding (each parameter rounded up to a multiple of
N elements) and are measured at the end of the backward pass, when all three kinds are live.
Transient buffers (one parameter's full gradient before it is reduced, the gathered
parameters of the module running in stage 3) are reported apart as ``transient_peak``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

STAGES = (1, 2, 3)
ELEMENTWISE = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}


def zero_formula_bytes(num_params: int, world_size: int, stage: int, element_size: int = 4,
                       k: float | None = None) -> dict[str, float]:
    """The ZeRO paper's model-state bytes per rank, split by kind.

    Args:
        num_params: P, the number of parameters.
        world_size: N, the number of ranks.
        stage: 0 (plain data parallel), 1, 2 or 3.
        element_size: Bytes per element of parameters and gradients (2 for the paper's fp16,
            4 for fp32, 8 for fp64). Default 4.
        k: Optimizer-state bytes per parameter, K. Default ``2 * element_size`` (Adam's two
            moments in the parameters' dtype); the paper's mixed-precision Adam is ``k=12``.

    Returns:
        ``{"params", "grads", "optimizer", "total"}`` in bytes.
    """
    if stage not in (0, *STAGES):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if num_params < 0 or world_size < 1 or element_size < 1:
        raise ValueError(f"need num_params >= 0, world_size >= 1, element_size >= 1; got {num_params}, "
                         f"{world_size}, {element_size}")
    p, n, e = float(num_params), float(world_size), float(element_size)
    k = 2 * e if k is None else float(k)
    params = e * p / n if stage == 3 else e * p
    grads = e * p / n if stage >= 2 else e * p
    optim = k * p / n if stage >= 1 else k * p
    return {"params": params, "grads": grads, "optimizer": optim, "total": params + grads + optim}


class _Sharded:
    """One parameter's full padded buffer, its owned piece and its gradient piece."""

    def __init__(self, param: nn.Parameter, rank: int, world: int, stage: int) -> None:
        self.param, self.shape, self.numel = param, param.shape, param.numel()
        self.padded = -(-self.numel // world) * world
        self.size = self.padded // world
        self.lo = rank * self.size
        full = torch.zeros(self.padded, dtype=param.dtype, device=param.device)
        full[: self.numel] = param.detach().reshape(-1)
        self.full = full
        param.data = full[: self.numel].view(self.shape)
        if stage == 3:
            # The owned piece is the master copy; the full buffer exists only while in use.
            self.shard = full[self.lo:self.lo + self.size].clone()
            self.release()
        else:
            # Stepping a view of the full buffer updates the replica in place: no extra copy.
            self.shard = full[self.lo:self.lo + self.size]
        self.grad_full: torch.Tensor | None = None
        if stage == 1:
            # Autograd accumulates into an existing .grad in place, so the gradient lands in a
            # padded buffer that can be reduce-scattered without a copy.
            self.grad_full = torch.zeros(self.padded, dtype=param.dtype, device=param.device)
            param.grad = self.grad_full[: self.numel].view(self.shape)
            self.shard.grad = self.grad_full[self.lo:self.lo + self.size]
        else:
            self.shard.grad = torch.zeros(self.size, dtype=param.dtype, device=param.device)

    @property
    def gathered(self) -> bool:
        return self.full.untyped_storage().nbytes() > 0

    def gather(self, group: Any) -> None:
        if not self.gathered:
            self.full.untyped_storage().resize_(self.padded * self.full.element_size())
            dist.all_gather_single(self.full, self.shard, group=group)

    def release(self) -> None:
        self.full.untyped_storage().resize_(0)


class ZeroOptimizer:
    """ZeRO stage 1, 2 or 3 over a module replicated on every rank (an optimizer, not an agent capability).

    Usage on every rank, after ``dist.init_process_group``::

        opt = ZeroOptimizer(model, stage=3, optimizer="Adam", lr=1e-3)
        loss = loss_fn(model(x_local), y_local)
        loss.backward()
        opt.step()          # gradients averaged over ranks, as DistributedDataParallel does
        opt.zero_grad()

    Args:
        module: The model; its parameters are broadcast from the group's first rank and then
            sharded in place (in stage 3 they stay empty outside forward/backward).
        stage: 1, 2 or 3.
        optimizer: Name of an elementwise torch optimizer: "Adam", "AdamW" or "SGD".
        group: Process group; None for the default group.
        **optimizer_kwargs: Passed to the optimizer (lr, betas, eps, weight_decay, ...).
    """

    def __init__(self, module: nn.Module, stage: int, optimizer: str = "Adam", group: Any = None,
                 **optimizer_kwargs: Any) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if optimizer not in ELEMENTWISE:
            raise ValueError(f"optimizer must be one of {sorted(ELEMENTWISE)} (elementwise), got {optimizer!r}")
        if not dist.is_initialized():
            raise RuntimeError("ZeroOptimizer needs an initialized process group (dist.init_process_group)")
        self.module, self.stage, self.group = module, stage, group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        src = 0 if group is None else dist.get_global_rank(group, 0)
        params = [p for p in module.parameters() if p.requires_grad]
        if len({p.dtype for p in params}) > 1:
            raise ValueError(f"all parameters must share one dtype, got {sorted({str(p.dtype) for p in params})}")
        for p in params:
            dist.broadcast(p.data, src, group=group)
        self.shards = {p: _Sharded(p, self.rank, self.world, stage) for p in params}
        self.optimizer = ELEMENTWISE[optimizer]([s.shard for s in self.shards.values()], **optimizer_kwargs)
        self.transient_peak = 0
        self.last_memory: dict[str, int] = {}
        self._hooks: list[Any] = []
        if stage >= 2:
            for p in params:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._reduce_hook))
        if stage == 3:
            for mod in module.modules():
                if any(p in self.shards for p in mod.parameters(recurse=False)):
                    self._hooks.append(mod.register_forward_pre_hook(self._pre_forward))
                    self._hooks.append(mod.register_forward_hook(self._post_forward))

    # Stage 2 and 3: reduce each gradient as soon as autograd has it -------------------------
    def _reduce_hook(self, param: torch.Tensor) -> None:
        s = self.shards[param]
        grad = param.grad.reshape(-1)
        if s.padded != s.numel:
            grad = torch.cat([grad, grad.new_zeros(s.padded - s.numel)])
        piece = torch.empty(s.size, dtype=grad.dtype, device=grad.device)
        self._note_transient(grad.numel() + piece.numel(), grad.element_size())
        dist.reduce_scatter_single(piece, grad, group=self.group)
        s.shard.grad += piece
        param.grad = None
        if self.stage == 3:
            s.release()

    # Stage 3: gather just in time, release right after ---------------------------------------
    def _own(self, mod: nn.Module) -> list[_Sharded]:
        return [self.shards[p] for p in mod.parameters(recurse=False) if p in self.shards]

    def _gather(self, mod: nn.Module) -> None:
        for s in self._own(mod):
            s.gather(self.group)
        self._note_transient(sum(s.padded for s in self.shards.values() if s.gathered),
                             next(iter(self.shards)).element_size())

    def _pre_forward(self, mod: nn.Module, args: Any) -> None:
        self._gather(mod)

    def _post_forward(self, mod: nn.Module, args: Any, output: Any) -> Any:
        for s in self._own(mod):
            s.release()
        outs = [t for t in (output if isinstance(output, (tuple, list)) else [output])
                if isinstance(t, torch.Tensor) and t.requires_grad]
        if outs and torch.is_grad_enabled():
            # Before this module's backward runs, its parameters must be back.
            torch.autograd.graph.register_multi_grad_hook(outs, lambda grads: self._gather(mod), mode="any")
        return output

    def _note_transient(self, elems: int, element_size: int) -> None:
        self.transient_peak = max(self.transient_peak, elems * element_size)

    # The step ---------------------------------------------------------------------------
    def step(self) -> None:
        """Averages gradients over ranks, steps the owned pieces, and (stages 1, 2) re-gathers."""
        self.last_memory = self.memory_bytes()
        for s in self.shards.values():
            if self.stage == 1:
                g = s.param.grad
                if g is None or g.untyped_storage().data_ptr() != s.grad_full.untyped_storage().data_ptr():
                    # Someone replaced .grad (module.zero_grad() sets it to None): re-attach the
                    # padded buffer so the reduce-scatter sees this step's gradient.
                    s.grad_full.zero_()
                    if g is not None:
                        s.grad_full[: s.numel].copy_(g.reshape(-1))
                    s.param.grad = s.grad_full[: s.numel].view(s.shape)
                dist.reduce_scatter_single(s.shard.grad, s.grad_full, group=self.group)
            s.shard.grad /= self.world
        self.optimizer.step()
        if self.stage < 3:
            for s in self.shards.values():
                dist.all_gather_single(s.full, s.shard, group=self.group)

    def zero_grad(self) -> None:
        """Zeros the gradient buffers (kept allocated: they are part of the stage's footprint)."""
        for s in self.shards.values():
            if s.grad_full is not None:
                s.grad_full.zero_()
            else:
                s.shard.grad.zero_()

    def full_parameters(self) -> list[torch.Tensor]:
        """Copies of the full parameters (gathered in stage 3), in ``module.parameters()`` order."""
        out = []
        for s in self.shards.values():
            was = s.gathered
            s.gather(self.group)
            out.append(s.full[: s.numel].view(s.shape).clone())
            if not was:
                s.release()
        return out

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of model states this rank holds now: parameters, gradients, optimizer state.

        Storages are counted once each; the optimizer's 0-dim ``step`` counters are left out.
        """
        seen: set[int] = set()

        def nbytes(t: torch.Tensor | None) -> int:
            if t is None:
                return 0
            st = t.untyped_storage()
            if st.data_ptr() in seen or st.nbytes() == 0:
                return 0
            seen.add(st.data_ptr())
            return st.nbytes()

        params = sum(nbytes(s.full) + (nbytes(s.shard) if self.stage == 3 else 0) for s in self.shards.values())
        grads = sum(nbytes(s.grad_full) + nbytes(s.shard.grad) + nbytes(s.param.grad) for s in self.shards.values())
        optim = sum(nbytes(v) for st in self.optimizer.state.values() for v in st.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0)
        return {"params": params, "grads": grads, "optimizer": optim, "total": params + grads + optim}

    def close(self) -> None:
        """Removes the hooks (the module keeps its current, stage-3-gathered-on-demand state)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
