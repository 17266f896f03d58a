"""Parameter server push-pull on ``torch.distributed.rpc``: BSP, SSP (bounded staleness) and async.

S server processes each own a contiguous shard of a flat parameter vector; W worker processes
loop: pull every shard, compute a gradient on their own data, push each gradient piece to its
shard, advance their clock. The consistency mode decides when a pull may be answered and
when a pushed gradient is applied (Ho et al. 2013, "More effective distributed ML via a stale
synchronous parallel parameter server"):

* ``bsp`` (bulk synchronous): a server buffers the W gradients of clock c and applies their
  mean once all have arrived (summed in worker order, so the result is bit-identical to
  synchronous SGD); a pull for clock c waits until round c-1 is applied.
* ``ssp`` (stale synchronous, bound s): every push is applied at once (scaled by 1/W); a pull
  for clock c waits until the slowest worker has pushed clock c-s-1, i.e. no worker runs more
  than s clocks ahead of the slowest.
* ``async``: every push applied at once, every pull answered at once.

Pulls are ``@rpc.functions.async_execution`` futures completed by the push that satisfies
them, so a waiting pull holds no server thread. Servers record a snapshot after each update
(time, shard) for loss-vs-wall-time curves, and every answered pull's clock gap for the SSP
bound check.

A worker that dies: in BSP (and SSP) the others would wait for its push forever. So while any
worker has steps left, each server pings the unfinished workers every ``heartbeat_s`` (an RPC
served by the worker's RPC threads, so a busy or sleeping worker still answers). A ping that
fails (the peer's process is gone, its connection refused or closed) or times out marks the
run failed: every waiting and later pull or push gets a RuntimeError naming the worker, the
surviving workers raise it and leave without the graceful (all-process) RPC shutdown, and the
server raises it too once they have left (so that its replies carrying the error go out first).
Workers that are done with their steps wait on the servers for the others before the graceful
shutdown, so that they too get the error instead of waiting there for the dead one. :func:`run_parameter_server` then
raises :class:`~capabilities.training.launch.WorkerError` with each rank's fate.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed.rpc as rpc

from capabilities.training.ring_allreduce import chunk_bounds

MODES = ("bsp", "ssp", "async")


def sync_sgd_update(params: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
    """One synchronous SGD step with the mean of ``grads``, summed in list order."""
    acc = grads[0].clone()
    for g in grads[1:]:
        acc += g
    return params - lr * (acc / len(grads))


@dataclass
class PSConfig:
    """What a parameter-server run needs (validated by :func:`run_parameter_server`).

    Args:
        mode: "bsp", "ssp" or "async".
        staleness: SSP bound s >= 0 (ignored by the other modes).
        num_servers: S >= 1 server processes.
        num_workers: W >= 1 worker processes.
        steps: Clocks (iterations) per worker.
        lr: Learning rate.
        straggler_delay_s: Extra seconds worker 0 sleeps every iteration (the straggler).
        timeout_s: RPC timeout and overall deadline.
        heartbeat_s: How often servers ping unfinished workers to notice a dead one.
        ping_timeout_s: How long a ping may go unanswered before its worker counts as lost (a
            hung or stopped process answers nothing, not even an error). Default 10.
    """

    mode: str = "bsp"
    staleness: int = 2
    num_servers: int = 2
    num_workers: int = 3
    steps: int = 20
    lr: float = 0.1
    straggler_delay_s: float = 0.0
    timeout_s: float = 60.0
    heartbeat_s: float = 0.2
    ping_timeout_s: float = 10.0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name, low in (("staleness", 0), ("num_servers", 1), ("num_workers", 1), ("steps", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an int >= {low}, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.straggler_delay_s < 0 or self.timeout_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError(f"need lr > 0, straggler_delay_s >= 0, timeout_s > 0, heartbeat_s > 0; got "
                             f"{self.lr}, {self.straggler_delay_s}, {self.timeout_s}, {self.heartbeat_s}")
        if not 0 < self.ping_timeout_s:
            raise ValueError(f"ping_timeout_s must be > 0, got {self.ping_timeout_s}")


class ServerShard:
    """One server's shard of the parameters and its consistency bookkeeping."""

    def __init__(self, values: torch.Tensor, cfg: PSConfig, t0: float) -> None:
        self.params = values.clone()
        self.cfg, self.t0 = cfg, t0
        self.lock = threading.Lock()
        self.clocks = [0] * cfg.num_workers  # pushes received from each worker
        self.rounds = 0  # BSP rounds applied
        self.buffer: dict[int, dict[int, torch.Tensor]] = {}
        self.waiting: list[tuple[int, int, Any]] = []  # (worker, clock, future)
        self.snapshots: list[tuple[float, int, torch.Tensor]] = [(0.0, 0, self.params.clone())]
        self.pulls: list[tuple[int, int, int]] = []  # (worker, clock, slowest clock when answered)
        self.updates = 0
        self.failure: str | None = None
        self.finish_waiters: list[Any] = []  # workers done with their steps, waiting for the rest
        self.all_pushed = threading.Event()  # wakes the watcher as soon as the last push is in

    def unfinished(self) -> list[int]:
        """Workers that have not pushed all ``cfg.steps`` clocks yet."""
        with self.lock:
            return [w for w, c in enumerate(self.clocks) if c < self.cfg.steps]

    def fail(self, why: str) -> None:
        """Marks the run failed: every waiting pull, and every later pull or push, raises ``why``."""
        with self.lock:
            if self.failure is None:
                self.failure = why
            futs = [fut for _, _, fut in self.waiting] + self.finish_waiters
            self.waiting, self.finish_waiters = [], []
        for fut in futs:
            fut.set_exception(RuntimeError(self.failure))

    def all_finished(self) -> Any:
        """A future completed once every worker has pushed its last clock (or failed with the run)."""
        fut: Any = torch.futures.Future()
        with self.lock:
            if self.failure is not None:
                fut.set_exception(RuntimeError(self.failure))
            elif min(self.clocks) >= self.cfg.steps:
                fut.set_result(None)
            else:
                self.finish_waiters.append(fut)
        return fut

    def _ready(self, clock: int) -> bool:
        if self.cfg.mode == "bsp":
            return self.rounds >= clock
        if self.cfg.mode == "ssp":
            return min(self.clocks) >= clock - self.cfg.staleness
        return True

    def pull(self, worker: int, clock: int) -> Any:
        fut: Any = torch.futures.Future()
        with self.lock:
            if self.failure is not None:
                fut.set_exception(RuntimeError(self.failure))
            elif self._ready(clock):
                self.pulls.append((worker, clock, min(self.clocks)))
                fut.set_result(self.params.clone())
            else:
                self.waiting.append((worker, clock, fut))
        return fut

    def push(self, worker: int, clock: int, grad: torch.Tensor) -> None:
        answered = []
        with self.lock:
            if self.failure is not None:
                raise RuntimeError(self.failure)
            if clock != self.clocks[worker]:
                raise RuntimeError(f"worker {worker} pushed clock {clock}, expected {self.clocks[worker]}")
            self.clocks[worker] += 1
            if self.cfg.mode == "bsp":
                got = self.buffer.setdefault(clock, {})
                got[worker] = grad
                if len(got) == self.cfg.num_workers:
                    self.params = sync_sgd_update(self.params, [got[w] for w in range(len(got))], self.cfg.lr)
                    del self.buffer[clock]
                    self.rounds += 1
                    self._snapshot()
            else:
                self.params = self.params - (self.cfg.lr / self.cfg.num_workers) * grad
                self._snapshot()
            still = []
            for w, c, fut in self.waiting:
                if self._ready(c):
                    self.pulls.append((w, c, min(self.clocks)))
                    answered.append((fut, self.params.clone()))
                else:
                    still.append((w, c, fut))
            self.waiting = still
            finished = []
            if min(self.clocks) >= self.cfg.steps:
                finished, self.finish_waiters = self.finish_waiters, []
                self.all_pushed.set()
        # Completing a future runs its callbacks (the RPC reply); do it outside the lock.
        for fut, value in answered:
            fut.set_result(value)
        for fut in finished:
            fut.set_result(None)

    def _snapshot(self) -> None:
        self.updates += 1
        self.snapshots.append((time.time() - self.t0, self.updates, self.params.clone()))


_SHARD: ServerShard | None = None


@rpc.functions.async_execution
def _rpc_pull(worker: int, clock: int) -> Any:
    assert _SHARD is not None
    return _SHARD.pull(worker, clock)


def _rpc_push(worker: int, clock: int, grad: torch.Tensor) -> RuntimeError | None:
    assert _SHARD is not None
    try:
        _SHARD.push(worker, clock, grad)
    except RuntimeError as exc:
        # Returned, not raised: the worker raises it as it is, the way it gets a failed pull
        # (a raised one would come back wrapped in the RPC layer's remote traceback text).
        return exc
    return None


@rpc.functions.async_execution
def _rpc_all_finished() -> Any:
    assert _SHARD is not None
    return _SHARD.all_finished()


def _rpc_ping() -> None:
    """Answered by a worker's RPC threads: proof that its process is alive."""


def _watch_workers(shard: ServerShard, name: str, workers: list[str], cfg: PSConfig) -> None:
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


def _raise_failures(values: list[Any]) -> list[Any]:
    """Raises the first server failure among RPC results, else returns them.

    A server fails a pull by completing its future with an exception, which through
    ``@async_execution`` arrives as the exception object, not raised; pushes return theirs.
    """
    for value in values:
        if isinstance(value, BaseException):
            raise value
    return values


class ParameterServerClient:
    """A worker's handle on the sharded parameter server (``name = "parameter_server"``).

    Args:
        worker: This worker's index in ``[0, num_workers)``.
        bounds: ``[start, end)`` of each server's shard in the flat parameter vector.
        servers: RPC names of the servers, one per shard.
    """

    name = "parameter_server"

    def __init__(self, worker: int, bounds: list[tuple[int, int]], servers: list[str]) -> None:
        self.worker, self.bounds, self.servers = worker, bounds, servers
        self.clock = 0

    def pull(self) -> torch.Tensor:
        """The full parameter vector, as soon as the mode allows this worker's clock.

        Raises:
            RuntimeError: a server failed the run (e.g. another worker died; the message says which).
        """
        futs = [rpc.rpc_async(s, _rpc_pull, args=(self.worker, self.clock)) for s in self.servers]
        return torch.cat(_raise_failures([f.wait() for f in futs]))

    def wait_all_finished(self) -> None:
        """Blocks until every worker has pushed its last clock to every server.

        A worker that leaves the graceful RPC shutdown (a rendezvous of all processes) only
        after this never waits there for a dead peer.

        Raises:
            RuntimeError: a server failed the run (e.g. another worker died).
        """
        futs = [rpc.rpc_async(s, _rpc_all_finished) for s in self.servers]
        _raise_failures([f.wait() for f in futs])

    def push(self, grad: torch.Tensor) -> None:
        """Sends each server its piece of ``grad`` and advances this worker's clock.

        Raises:
            RuntimeError: a server failed the run, or refused the push (wrong clock).
        """
        futs = [rpc.rpc_async(s, _rpc_push, args=(self.worker, self.clock, grad[a:b].clone()))
                for s, (a, b) in zip(self.servers, self.bounds, strict=True)]
        _raise_failures([f.wait() for f in futs])
        self.clock += 1


@dataclass
class LeastSquares:
    """The task every worker trains: linear least squares on its own seeded slice of data.

    Args:
        dim: Number of parameters.
        examples_per_worker: Rows of each worker's data.
        seed: Seed of the data generator.
    """

    dim: int = 16
    examples_per_worker: int = 64
    seed: int = 0
    noise: float = 0.1
    _cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def data(self, worker: int, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Worker ``worker``'s inputs and targets (all workers share one true model)."""
        g = torch.Generator().manual_seed(self.seed)
        w_true = torch.randn(self.dim, generator=g, dtype=torch.float64)
        x = torch.randn(num_workers * self.examples_per_worker, self.dim, generator=g, dtype=torch.float64)
        y = x @ w_true + self.noise * torch.randn(x.shape[0], generator=g, dtype=torch.float64)
        lo = worker * self.examples_per_worker
        return x[lo:lo + self.examples_per_worker], y[lo:lo + self.examples_per_worker]

    @staticmethod
    def grad(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of 0.5 * mean((x @ params - y)^2)."""
        return x.T @ (x @ params - y) / x.shape[0]

    @staticmethod
    def loss(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(0.5 * ((x @ params - y) ** 2).mean())

    def init(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)


def _ps_process(rank: int, world: int, cfg: PSConfig, task: LeastSquares) -> dict[str, Any]:
    global _SHARD
    bounds = chunk_bounds(task.dim, cfg.num_servers)
    servers = [f"ps{i}" for i in range(cfg.num_servers)]
    is_server = rank < cfg.num_servers
    name = servers[rank] if is_server else f"worker{rank - cfg.num_servers}"
    if is_server:
        a, b = bounds[rank]
        # The shard exists before init_rpc returns anywhere, so no pull can arrive too early.
        _SHARD = ServerShard(task.init()[a:b], cfg, 0.0)

    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rpc_timeout=cfg.timeout_s, num_worker_threads=8, _transports=["uv"],
    )
    rpc.init_rpc(name, rank=rank, world_size=world, rpc_backend_options=opts)
    workers = [f"worker{w}" for w in range(cfg.num_workers)]
    if _SHARD is not None:
        # init_rpc is a rendezvous: every process leaves it at about the same moment, so the
        # servers' clocks start together (start-up is not part of the curve).
        _SHARD.t0 = time.time()
    out: dict[str, Any] = {"role": "server" if is_server else "worker"}
    ok = False
    try:
        if is_server:
            assert _SHARD is not None
            _watch_workers(_SHARD, name, workers, cfg)
        else:
            worker = rank - cfg.num_servers
            x, y = task.data(worker, cfg.num_workers)
            from envs.api import Agent, ParameterStore

            agent = Agent(id=name).add(ParameterServerClient(worker, bounds, servers))
            client = agent.get(ParameterStore)
            for _ in range(cfg.steps):
                params = client.pull()
                if worker == 0 and cfg.straggler_delay_s > 0:
                    time.sleep(cfg.straggler_delay_s)
                client.push(task.grad(params, x, y))
            client.wait_all_finished()
            out["clock"] = client.clock
        ok = True
    finally:
        if ok:
            # Graceful: every process waits here until all have finished their RPCs.
            rpc.shutdown(graceful=True, timeout=cfg.timeout_s)
        else:
            # The graceful shutdown is a rendezvous of all processes, which a dead one never
            # joins; leave alone so the error reaches the launcher now.
            rpc.shutdown(graceful=False)
            _SHARD = None
    if is_server:
        assert _SHARD is not None
        out.update(shard=rank, params=_SHARD.params, snapshots=_SHARD.snapshots, pulls=_SHARD.pulls,
                   rounds=_SHARD.rounds)
        _SHARD = None
    return out


@dataclass
class PSResult:
    """What a run returns: final parameters, the loss-vs-time curve, and every pull's gap."""

    params: torch.Tensor
    curve: list[tuple[float, float]]  # (seconds since start, loss of the servers' model on all
    # data): the initial point, then one point per update applied by any server
    pull_gaps: list[int]  # worker clock minus slowest clock, for every answered pull
    extra: dict[str, Any] = field(default_factory=dict)


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

    cfg.validate()
    task = task or LeastSquares()
    world = cfg.num_servers + cfg.num_workers
    outs = launch(_ps_process, world, cfg, task, init="none", timeout_s=cfg.timeout_s,
                  start_method=start_method)
    servers = sorted((o for o in outs if o["role"] == "server"), key=lambda o: o["shard"])
    xs, ys = zip(*(task.data(w, cfg.num_workers) for w in range(cfg.num_workers)), strict=True)
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    # Merge the shards' snapshots in time order into the full model's trajectory.
    events = sorted((t, s["shard"], v) for s in servers for t, _, v in s["snapshots"][1:])
    current = [s["snapshots"][0][2] for s in servers]
    curve = [(0.0, task.loss(torch.cat(current), x_all, y_all))]
    for t, shard, v in events:
        current[shard] = v
        curve.append((t, task.loss(torch.cat(current), x_all, y_all)))
    gaps = [c - slow for s in servers for _, c, slow in s["pulls"]]
    return PSResult(torch.cat([s["params"] for s in servers]), curve, gaps,
                    {"rounds": [s["rounds"] for s in servers]})
