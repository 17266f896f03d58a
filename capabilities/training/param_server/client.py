"""A worker's handle on the sharded parameter server: an agent's :class:`envs.api.ParameterStore`."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.rpc as rpc

from capabilities.training.param_server.handlers import _rpc_all_finished, _rpc_pull, _rpc_push


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
    """A worker's handle on the sharded parameter server, an agent's :class:`envs.api.ParameterStore`.

    Args:
        worker: This worker's index in ``[0, num_workers)``.
        bounds: ``[start, end)`` of each server's shard in the flat parameter vector.
        servers: RPC names of the servers, one per shard.
    """

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
