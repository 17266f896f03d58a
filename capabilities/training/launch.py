"""Spawning a local process group: N processes on 127.0.0.1, results back, always torn down.

``launch(fn, world_size, *args)`` starts ``world_size`` processes, initializes a
``torch.distributed`` process group in each (gloo on CPU; NCCL when ``backend="nccl"`` and CUDA
is present, unmeasured here), runs ``fn(rank, world_size, *args)`` and returns the per-rank
results in rank order. The same worker code runs under ``torchrun`` across hosts, since it
only uses the initialized default group.

The group's rendezvous store (``MASTER_PORT``) is served by the calling process, as
``torchrun``'s agent serves it, not by rank 0: it lives until every rank has returned, so rank
0 returning first never cuts the others off (``torch.distributed.rpc``'s graceful shutdown
reads the store on every rank).

Failure handling is the point of this module: a worker that raises or dies makes ``launch``
raise :class:`WorkerError` naming every rank's fate. The survivors notice through gloo (a
closed connection, or the process group's ``timeout``), and whatever is still running after a
grace period is terminated, then killed. Nothing outlives the call, not even a caller killed
with SIGKILL: each worker asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``
on Linux; the parent is the fork server, which exits with the caller) and watches the caller's
pid from a thread as well, so workers stop within a second or two of the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

START_METHODS = ("spawn", "fork", "forkserver")
INITS = ("process_group", "none")


class WorkerError(RuntimeError):
    """One or more workers of a launched group failed; the message names each rank's fate."""

    def __init__(self, message: str, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.failures = failures


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with(caller_pid: int, poll_s: float = 0.5) -> None:
    """Makes this process exit when ``caller_pid`` is gone (call it first thing in a child).

    Two guards: the kernel kills this process when its parent dies (``PR_SET_PDEATHSIG``, Linux
    only), and a daemon thread polls ``caller_pid``, which also covers a parent that is not the
    caller (a fork server) and a caller that died before the first guard was set.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def watch() -> None:
        while True:
            try:
                os.kill(caller_pid, 0)
            except ProcessLookupError:
                os._exit(1)  # the caller is gone: nobody will read our result
            except PermissionError:
                pass
            time.sleep(poll_s)

    threading.Thread(target=watch, name="agora-caller-watch", daemon=True).start()


def _worker(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    args: tuple[Any, ...],
    port_from: Any,
    backend: str,
    timeout_s: float,
    threads: int,
    init: str,
    results: Any,
    caller_pid: int,
) -> None:
    die_with(caller_pid)
    port = port_from.recv()  # the launcher's store (see _run), started once every rank is forked
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"  # every rank is a client of that store
    # gloo's TCP pairs bind the address the hostname resolves to; pin them to loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("TP_SOCKET_IFNAME", "lo")
    import warnings

    import torch
    import torch.distributed as dist

    # torch.distributed's internal deprecation notices would repeat once per rank.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed")
    # A forked child must not reuse the parent's OpenMP pool (it does not exist in the child).
    torch.set_num_threads(threads)
    status: tuple[str, int, bytes] | None = None
    try:
        if backend == "nccl":
            # One GPU per rank, round-robin over the visible devices (untested here: no GPU).
            torch.cuda.set_device(rank % torch.cuda.device_count())
        if init == "process_group":
            dist.init_process_group(
                backend, rank=rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        out = fn(rank, world_size, *args)
        status = ("ok", rank, pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which raises
        text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        status = ("err", rank, text.encode())
    finally:
        if init == "process_group" and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    results.put(status)
    results.close()
    results.join_thread()


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: Literal["gloo", "nccl"] = "gloo",
    timeout_s: float = 60.0,
    start_method: Literal["spawn", "fork", "forkserver"] = "forkserver",
    threads: int = 1,
    init: Literal["process_group", "none"] = "process_group",
    grace_s: float | None = None,
) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` in ``world_size`` local processes.

    Args:
        fn: A module-level function (picklable for ``spawn``); its return value must pickle.
        world_size: Number of processes, >= 1.
        *args: Passed to ``fn`` after ``rank`` and ``world_size``.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA only). Default gloo.
        timeout_s: The process group's collective timeout and the whole call's deadline
            (plus start-up). Default 60.
        start_method: ``"forkserver"`` (a clean server process imports torch once and forks
            each worker from it, so later launches start fast), ``"spawn"`` (a fresh
            interpreter per worker), or ``"fork"`` (fastest; for tests whose workers are
            defined in the test module; the parent must not hold locks other threads use).
            Default forkserver.
        threads: ``torch.set_num_threads`` in each worker. Default 1.
        init: ``"process_group"`` to initialize torch.distributed first, ``"none"`` to let
            ``fn`` do it (for torch.distributed.rpc). Default process_group.
        grace_s: After the first failure, how long survivors get to notice and exit before
            they are terminated. Default ``min(timeout_s, 10)``.

    Returns:
        The results of ``fn``, by rank.

    Raises:
        ValueError: for a bad argument.
        WorkerError: when any worker raised or died; the message names each rank's fate.
        TimeoutError: when the group ran past ``timeout_s`` plus start-up; all are killed.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    if backend == "nccl":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, which this machine does not have; use 'gloo'")
    grace = min(timeout_s, 10.0) if grace_s is None else grace_s
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # Only takes effect when this process starts its fork server (the first launch).
        # torch._dynamo is imported by every optimizer's first step; paying for it once in
        # the server instead of in every worker saves seconds per launch.
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed", "capabilities.training",
                                    "capabilities.training.workers"])
    return _run(ctx, fn, world_size, args, backend, timeout_s, threads, init, grace)


def _run(ctx: Any, fn: Callable[..., Any], world_size: int, args: tuple[Any, ...], backend: str,
         timeout_s: float, threads: int, init: str, grace: float) -> list[Any]:
    """:func:`launch` after the checks: the processes, the store, the results, the clean-up."""
    import torch.distributed as dist

    # (reader, writer) per rank. Pipes, not one Event: Event.set() waits for each waiting process
    # to acknowledge, and would hang on one that died waiting.
    ports = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, rank, world_size, args, ports[rank][0], backend, timeout_s, threads, init, results, os.getpid()),
            daemon=True,
            name=f"agora-rank{rank}",
        )
        for rank in range(world_size)
    ]
    outcome: dict[int, tuple[str, bytes]] = {}
    # Start-up (importing torch in a spawned child) is not part of the collective timeout.
    deadline = time.monotonic() + timeout_s + 30.0 + 5.0 * world_size
    first_failure: float | None = None
    started: list[Any] = []  # only these can be joined: a failed start must surface its own error
    try:
        for p in procs:
            p.start()
            started.append(p)
        # This process hosts the group's rendezvous store for the whole call, so the store
        # outlives every rank (torchrun's agent does the same); the OS picks the port as it binds
        # it. It starts after the last fork: a child forked while the store's server thread holds
        # a lock would inherit the lock held and no thread to release it.
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        for _, writer in ports:
            writer.send(store.port)
        while len(outcome) < world_size:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"process group of {world_size} ran past its deadline of {timeout_s:.0f}s "
                    f"(+ start-up); ranks without a result: {sorted(set(range(world_size)) - set(outcome))}"
                )
            if first_failure is not None and now - first_failure > grace:
                break
            try:
                kind, rank, payload = results.get(timeout=0.1)
                outcome[rank] = (kind, payload)
                if kind == "err" and first_failure is None:
                    first_failure = time.monotonic()
                continue
            except queue.Empty:
                pass
            for rank, p in enumerate(procs):
                if rank not in outcome and p.exitcode is not None:
                    # Exited without a result: either a death, or its result is still in the pipe.
                    with contextlib.suppress(queue.Empty):
                        while True:
                            kind, r, payload = results.get(timeout=0.2)
                            outcome[r] = (kind, payload)
                    if rank not in outcome:
                        outcome[rank] = ("died", f"exit code {p.exitcode}".encode())
                        if first_failure is None:
                            first_failure = time.monotonic()
    finally:
        for p in started:
            p.join(timeout=2.0 if first_failure is None else 0.5)
        for p in started:
            if p.is_alive():
                p.terminate()
        for p in started:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)
        results.close()
        results.cancel_join_thread()
        for reader, writer in ports:
            reader.close()
            writer.close()
        # Stopped now, not by whoever collects a traceback holding this frame: a child forked by
        # a later launch would copy the store and, collecting it, stop a thread it does not have.
        store = None

    failures = {}
    for rank in range(world_size):
        kind, payload = outcome.get(rank, ("killed", b"still running after another rank failed; terminated"))
        if kind != "ok":
            failures[rank] = f"{kind}: {payload.decode(errors='replace')}"
    if failures:
        lines = "\n".join(f"  rank {r} {why.strip()}" for r, why in sorted(failures.items()))
        first = min(failures, key=lambda r: (not failures[r].startswith("died"), r))
        raise WorkerError(f"{len(failures)} of {world_size} workers failed (first: rank {first}):\n{lines}", failures)
    return [pickle.loads(outcome[rank][1]) for rank in range(world_size)]
