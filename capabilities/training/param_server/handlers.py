"""The servers' side of the RPCs: handlers answering pulls and pushes from this process's shard,
and the heartbeat that notices a dead worker.

The handlers are module-level functions (``torch.distributed.rpc`` sends them by name) that
work on the one shard this server process holds, :data:`SHARD`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed.rpc as rpc

from capabilities.training.param_server.config import PSConfig
from capabilities.training.param_server.shard import ServerShard

#: The shard this server process holds (set by the process before its RPC agent starts).
SHARD: ServerShard | None = None


@rpc.functions.async_execution
def _rpc_pull(worker: int, clock: int) -> Any:
    assert SHARD is not None
    return SHARD.pull(worker, clock)


def _rpc_push(worker: int, clock: int, grad: torch.Tensor) -> RuntimeError | None:
    assert SHARD is not None
    try:
        SHARD.push(worker, clock, grad)
    except RuntimeError as exc:
        # Returned, not raised: the worker raises it as it is, the way it gets a failed pull
        # (a raised one would come back wrapped in the RPC layer's remote traceback text).
        return exc
    return None


@rpc.functions.async_execution
def _rpc_all_finished() -> Any:
    assert SHARD is not None
    return SHARD.all_finished()


def _rpc_ping() -> None:
    """Answered by a worker's RPC threads: proof that its process is alive."""


def watch_workers(shard: ServerShard, name: str, workers: list[str], cfg: PSConfig) -> None:
    """Blocks until every worker has pushed all its clocks, or has finished or left after one died.

    Raises:
        RuntimeError: a worker stopped answering before its last push (the message names it).
    """
    pings: dict[int, Any] = {}
    gone: set[int] = set()
    linger_until: float | None = None

    def lost(w: int, exc: BaseException) -> None:
        gone.add(w)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shard.fail(f"parameter server {name}: worker {w} ({workers[w]}) stopped answering after "
                   f"{shard.clocks[w]} of {cfg.steps} pushes ({why}); {cfg.mode} training cannot go on "
                   f"without it")

    while True:
        if shard.failure is None:
            alive = [w for w in shard.unfinished() if w not in gone]
        else:
            # Failed: stay until the survivors have received the error and left (leaving at
            # once could drop the replies carrying it), but not for long.
            alive = [w for w in range(len(workers)) if w not in gone]
            if linger_until is None:
                linger_until = time.monotonic() + min(cfg.timeout_s, 5.0)
            if time.monotonic() > linger_until:
                break
        if not alive:
            break
        for w in alive:
            fut = pings.get(w)
            if fut is not None and fut.done():
                del pings[w]
                try:
                    fut.wait()
                except Exception as exc:  # noqa: BLE001 -- any failed ping means the peer is lost
                    lost(w, exc)
                    continue
            if w not in pings:
                try:
                    # A ping's own short timeout: a hung worker (SIGSTOP, a deadlock) is named
                    # within seconds, before any pull or push waiting on it hits the RPC timeout
                    # and blames whoever was waiting.
                    pings[w] = rpc.rpc_async(workers[w], _rpc_ping, timeout=min(cfg.ping_timeout_s, cfg.timeout_s))
                except Exception as exc:  # noqa: BLE001 -- refused at once: the peer is lost
                    lost(w, exc)
        if shard.failure is None:
            shard.all_pushed.wait(cfg.heartbeat_s)
        else:
            time.sleep(cfg.heartbeat_s)
    if shard.failure is not None:
        raise RuntimeError(shard.failure)
