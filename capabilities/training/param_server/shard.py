"""One server's shard of the parameters and its consistency bookkeeping (BSP, SSP, async).

A pull is a future completed once the mode allows the worker's clock; a push is applied at
once (SSP, async: scaled by 1/W) or buffered until all W gradients of its clock have arrived
(BSP: their mean, summed in worker order, so the result is bit-identical to synchronous SGD).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from capabilities.training.param_server.config import PSConfig


def sync_sgd_update(params: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
    """One synchronous SGD step with the mean of ``grads``, summed in list order."""
    acc = grads[0].clone()
    for g in grads[1:]:
        acc += g
    return params - lr * (acc / len(grads))


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
