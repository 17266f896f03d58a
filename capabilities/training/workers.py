"""The per-rank programs that the training experiments and benchmarks launch.

Each is a module-level function ``fn(rank, world_size, spec)`` for
:func:`capabilities.training.launch.launch`, run inside an initialized gloo process group,
returning plain data (numbers, lists) that the parent turns into metrics and figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from capabilities.training.data_parallel import DataParallel
from capabilities.training.ring_allreduce import RingAllReduce
from capabilities.training.zero import ZeroOptimizer

# ----------------------------------------------------------------------------------------
# All-reduce: correctness against gloo, bytes sent, time


def allreduce_worker(rank: int, world: int, numels: list[int], algorithms: list[str], repeats: int) -> dict[str, Any]:
    """For each size and algorithm: bytes this rank sent, equality with gloo, best time (s).

    Each algorithm is this rank's communicator (a :class:`RingAllReduce` with that algorithm,
    held by an agent, one per algorithm); gloo's own ``dist.all_reduce`` is the reference.
    """
    from envs.api import Agent, Communicator

    comms = {name: Agent(f"rank{rank}/{name}", capabilities=[RingAllReduce(algorithm=name)]).get(Communicator)
             for name in algorithms}
    out: dict[str, Any] = {}
    for numel in numels:
        g = torch.Generator().manual_seed(1000 * rank + numel)
        # Integer values: every summation order gives the same float, so equality is exact.
        x = torch.randint(-100, 100, (numel,), generator=g).to(torch.float32)
        ref = x.clone()
        dist.all_reduce(ref)
        fns = {name: (lambda t: dist.all_reduce(t)) if name == "gloo" else comms[name].all_reduce
               for name in ["gloo", *algorithms]}
        best = dict.fromkeys(fns, float("inf"))
        for name, fn in fns.items():
            y = x.clone()
            before = 0 if name == "gloo" else comms[name].bytes_sent
            fn(y)  # also the warm-up
            out[f"{name}/{numel}"] = {"bytes": None if name == "gloo" else comms[name].bytes_sent - before,
                                      "equal": bool(torch.equal(y, ref))}
        # Round-robin over the algorithms, so that other load on the machine hits all alike.
        for _ in range(repeats):
            for name, fn in fns.items():
                z = x.clone()
                dist.barrier()
                t0 = time.perf_counter()
                fn(z)
                dist.barrier()
                best[name] = min(best[name], time.perf_counter() - t0)
        for name in fns:
            out[f"{name}/{numel}"]["seconds"] = best[name]
    return out


# ----------------------------------------------------------------------------------------
# ZeRO: memory per rank and equality with plain data parallel, ZeroRedundancyOptimizer, FSDP2


@dataclass
class ZeroSpec:
    """The model and run of a ZeRO comparison.

    Args:
        widths: Layer widths of the MLP (input, hidden..., output).
        steps: Adam steps.
        batch: Examples per rank per step.
        dtype: "float32" or "float64".
        lr: Adam learning rate.
        seed: Seed of the model and data.
        stages: ZeRO stages to run.
        fsdp: Also run FSDP2 ``fully_shard`` (and ZeroRedundancyOptimizer) for comparison.
    """

    widths: list[int] = field(default_factory=lambda: [32, 64, 64, 8])
    steps: int = 3
    batch: int = 8
    dtype: str = "float32"
    lr: float = 1e-2
    seed: int = 0
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    fsdp: bool = True


def make_mlp(widths: list[int], dtype: torch.dtype, seed: int) -> nn.Sequential:
    """A seeded tanh MLP with the given layer widths."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(dtype)


def _batch(spec: ZeroSpec, rank: int, step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(spec.seed * 7919 + 100 * step + rank)
    x = torch.randn(spec.batch, spec.widths[0], generator=g, dtype=dtype)
    return x, torch.randn(spec.batch, spec.widths[-1], generator=g, dtype=dtype)


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def _average_grads(model: nn.Module, world: int) -> None:
    """Plain data parallel's step: every gradient summed with torch's all_reduce, then averaged."""
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world


def _nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def zero_worker(rank: int, world: int, spec: ZeroSpec) -> dict[str, Any]:
    """Trains the same MLP with plain DP, ZeRO 1-3, ZeroRedundancyOptimizer and FSDP2.

    Returns per method: model-state bytes on this rank (measured at the end of the last
    backward pass) and the largest parameter difference from plain data parallel.
    """
    dtype = getattr(torch, spec.dtype)
    kw = {"lr": spec.lr}
    loss_fn = nn.MSELoss()
    out: dict[str, Any] = {}

    # Plain data parallel: full replicas, all-reduced gradients, full Adam state.
    ref = make_mlp(spec.widths, dtype, spec.seed)
    opt = torch.optim.Adam(ref.parameters(), **kw)
    for t in range(spec.steps):
        x, y = _batch(spec, rank, t, dtype)
        opt.zero_grad()
        loss_fn(ref(x), y).backward()
        _average_grads(ref, world)
        if t == spec.steps - 1:
            mem = {"params": _nbytes(list(ref.parameters())), "grads": _nbytes([p.grad for p in ref.parameters()])}
        opt.step()
    mem["optimizer"] = _nbytes([v for s in opt.state.values() for v in s.values() if v.dim() > 0])
    out["dp"] = {"memory": mem, "diff": 0.0}
    ref_params = [p.detach().clone() for p in ref.parameters()]
    out["num_params"] = sum(p.numel() for p in ref_params)
    out["moved"] = _max_diff(ref_params, list(make_mlp(spec.widths, dtype, spec.seed).parameters()))

    for stage in spec.stages:
        model = make_mlp(spec.widths, dtype, spec.seed)
        z = ZeroOptimizer(model, stage, "Adam", **kw)
        for t in range(spec.steps):
            x, y = _batch(spec, rank, t, dtype)
            z.zero_grad()
            loss_fn(model(x), y).backward()
            z.step()
        out[f"zero{stage}"] = {"memory": z.last_memory, "transient_peak": z.transient_peak,
                               "diff": _max_diff(z.full_parameters(), ref_params)}
        z.close()

    if spec.fsdp:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        model = make_mlp(spec.widths, dtype, spec.seed)
        zro = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, **kw)
        for t in range(spec.steps):
            x, y = _batch(spec, rank, t, dtype)
            zro.zero_grad()
            loss_fn(model(x), y).backward()
            _average_grads(model, world)
            zro.step()
        zstate = [v for s in zro.optim.state.values() for v in s.values() if v.dim() > 0]
        out["torch_zero1"] = {"memory": {"params": _nbytes(list(model.parameters())),
                                         "grads": _nbytes([p.grad for p in model.parameters()]),
                                         "optimizer": _nbytes(zstate)},
                              "diff": _max_diff(list(model.parameters()), ref_params)}

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        model = make_mlp(spec.widths, dtype, spec.seed)
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        fopt = torch.optim.Adam(model.parameters(), **kw)
        for t in range(spec.steps):
            x, y = _batch(spec, rank, t, dtype)
            fopt.zero_grad()
            loss_fn(model(x), y).backward()
            if t == spec.steps - 1:
                fmem = {"params": _nbytes([p.to_local() for p in model.parameters()]),
                        "grads": _nbytes([p.grad.to_local() for p in model.parameters()])}
            fopt.step()
        fmem["optimizer"] = _nbytes([v.to_local() for s in fopt.state.values() for v in s.values()
                                     if hasattr(v, "to_local") and v.dim() > 0])
        full = [p.full_tensor() for p in model.parameters()]
        out["fsdp2"] = {"memory": fmem, "diff": _max_diff(full, ref_params)}
    for v in out.values():
        if isinstance(v, dict) and "memory" in v:
            v["memory"]["total"] = v["memory"]["params"] + v["memory"]["grads"] + v["memory"]["optimizer"]
    return out


# ----------------------------------------------------------------------------------------
# Scale-out vs scale-up


@dataclass
class ScalingSpec:
    """One data-parallel training run for the scaling experiment.

    Args:
        widths: MLP widths.
        global_batch: Examples per step, split over the ranks.
        steps: Training steps.
        lr: SGD learning rate.
        seed: Seed of model and data.
        target_loss: Loss whose first crossing defines time-to-loss.
    """

    widths: list[int] = field(default_factory=lambda: [64, 256, 256, 1])
    global_batch: int = 1024
    steps: int = 20
    lr: float = 0.05
    seed: int = 0
    target_loss: float = 0.5


def scaling_data(spec: ScalingSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded regression data set (a random teacher MLP), one global batch per step."""
    g = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(spec.global_batch, spec.widths[0], generator=g)
    teacher = torch.randn(spec.widths[0], generator=g) / spec.widths[0] ** 0.5
    y = torch.tanh(3 * x @ teacher).unsqueeze(1)
    return x, y


def scaling_worker(rank: int, world: int, spec: ScalingSpec) -> dict[str, Any]:
    """Data-parallel SGD on ``world`` ranks (or one process when ``world == 1``).

    Each rank is an agent whose communicator is the ring all-reduce; the data-parallel step
    sums gradients through it.

    Returns the loss of every step and the wall time (s) at the end of every step on rank 0.
    """
    from envs.api import Agent, Communicator

    model = make_mlp(spec.widths, torch.float32, spec.seed)
    agent = Agent(f"rank{rank}", capabilities=[RingAllReduce()])
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
    dp = DataParallel(model, opt, nn.MSELoss(), agent.get(Communicator))
    x, y = scaling_data(spec)
    losses, times = [], []
    if dist.is_initialized():
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(spec.steps):
        losses.append(dp.step(x, y))
        times.append(time.perf_counter() - t0)
    return {"losses": losses, "times": times}
