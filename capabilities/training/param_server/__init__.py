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

One piece per module: :mod:`.config` (modes, :class:`PSConfig`), :mod:`.shard` (a server's
shard and its consistency rules), :mod:`.handlers` (the RPC handlers and the dead-worker
heartbeat), :mod:`.client` (:class:`ParameterServerClient`, a worker's
:class:`envs.api.ParameterStore`), :mod:`.task` (the least-squares toy task), :mod:`.run` (the
launched processes) and :mod:`.results` (their outputs merged).
"""

from capabilities.training.param_server.client import ParameterServerClient
from capabilities.training.param_server.config import MODES, PSConfig
from capabilities.training.param_server.results import PSResult
from capabilities.training.param_server.run import run_parameter_server
from capabilities.training.param_server.shard import ServerShard, sync_sgd_update
from capabilities.training.param_server.task import LeastSquares

__all__ = [
    "MODES",
    "LeastSquares",
    "PSConfig",
    "PSResult",
    "ParameterServerClient",
    "ServerShard",
    "run_parameter_server",
    "sync_sgd_update",
]
