"""The entry point: servers and workers as local processes, and their results merged.

:func:`run_parameter_server` launches S server and W worker processes (one RPC group on
127.0.0.1); each server holds its shard and watches the workers, each worker is an agent whose
:class:`envs.api.ParameterStore` pulls, and pushes its gradient, ``steps`` times. The servers'
snapshots are merged into the full model's loss-vs-time curve (:mod:`.results`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import torch.distributed.rpc as rpc

from capabilities.training.param_server import handlers
from capabilities.training.param_server.client import ParameterServerClient
from capabilities.training.param_server.config import PSConfig
from capabilities.training.param_server.results import PSResult, merge_servers
from capabilities.training.param_server.shard import ServerShard
from capabilities.training.param_server.task import LeastSquares
from capabilities.training.ring_allreduce import chunk_bounds
from envs.api import Agent, ParameterStore


def _ps_process(rank: int, world: int, cfg: PSConfig, task: LeastSquares) -> dict[str, Any]:
    bounds = chunk_bounds(task.dim, cfg.num_servers)
    servers = [f"ps{i}" for i in range(cfg.num_servers)]
    is_server = rank < cfg.num_servers
    name = servers[rank] if is_server else f"worker{rank - cfg.num_servers}"
    if is_server:
        a, b = bounds[rank]
        # The shard exists before init_rpc returns anywhere, so no pull can arrive too early.
        handlers.SHARD = ServerShard(task.init()[a:b], cfg, 0.0)
    shard = handlers.SHARD if is_server else None

    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rpc_timeout=cfg.timeout_s, num_worker_threads=8, _transports=["uv"],
    )
    rpc.init_rpc(name, rank=rank, world_size=world, rpc_backend_options=opts)
    workers = [f"worker{w}" for w in range(cfg.num_workers)]
    if shard is not None:
        # init_rpc is a rendezvous: every process leaves it at about the same moment, so the
        # servers' clocks start together (start-up is not part of the curve).
        shard.t0 = time.time()
    out: dict[str, Any] = {"role": "server" if is_server else "worker"}
    ok = False
    try:
        if is_server:
            assert shard is not None
            handlers.watch_workers(shard, name, workers, cfg)
        else:
            worker = rank - cfg.num_servers
            x, y = task.data(worker, cfg.num_workers)
            # The worker is an agent; it reaches the servers only through its ParameterStore.
            agent = Agent(id=name, capabilities=[ParameterServerClient(worker, bounds, servers)])
            store = agent.get(ParameterStore)
            for _ in range(cfg.steps):
                params = store.pull()
                if worker == 0 and cfg.straggler_delay_s > 0:
                    time.sleep(cfg.straggler_delay_s)
                store.push(task.grad(params, x, y))
            store.wait_all_finished()
            out["clock"] = store.clock
        ok = True
    finally:
        if ok:
            # Graceful: every process waits here until all have finished their RPCs.
            rpc.shutdown(graceful=True, timeout=cfg.timeout_s)
        else:
            # The graceful shutdown is a rendezvous of all processes, which a dead one never
            # joins; leave alone so the error reaches the launcher now.
            rpc.shutdown(graceful=False)
            handlers.SHARD = None
    if shard is not None:
        out.update(shard=rank, params=shard.params, snapshots=shard.snapshots, pulls=shard.pulls, rounds=shard.rounds)
        handlers.SHARD = None
    return out


def run_parameter_server(
    cfg: PSConfig,
    task: LeastSquares | None = None,
    *,
    start_method: Literal["spawn", "fork", "forkserver"] = "forkserver",
) -> PSResult:
    """Runs servers and workers as local processes and returns the servers' view of training.

    Args:
        cfg: Mode, sizes, steps, learning rate, straggler.
        task: The least-squares task; default ``LeastSquares()``.
        start_method: How to start processes (see :func:`capabilities.training.launch.launch`).

    Returns:
        Final parameters, loss vs wall time (merged from all servers' snapshots), pull gaps.
    """
    from capabilities.training.launch import launch

    task = task or LeastSquares()
    world = cfg.num_servers + cfg.num_workers
    outs = launch(_ps_process, world, cfg, task, init="none", timeout_s=cfg.timeout_s,
                  start_method=start_method)
    return merge_servers([o for o in outs if o["role"] == "server"], task, cfg.num_workers)
