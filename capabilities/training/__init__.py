"""Training capabilities on torch.distributed: scale-out, ring all-reduce, ZeRO 1-3, parameter server.

Each mechanism lives in its own module. Two are capabilities an ``envs.Agent`` holds and
running code calls by kind: :class:`RingAllReduce` is a rank's ``Communicator`` (which
:class:`DataParallel` sums gradients through), :class:`ParameterServerClient` a worker's
``ParameterStore``. :class:`ZeroOptimizer` is an optimizer. :func:`launch` spawns a local
process group (gloo on 127.0.0.1) and always tears it down.
"""

from capabilities.training.data_parallel import DataParallel, data_parallel_gradient, shard_bounds
from capabilities.training.launch import WorkerError, free_port, launch
from capabilities.training.param_server import (
    MODES,
    LeastSquares,
    ParameterServerClient,
    PSConfig,
    PSResult,
    run_parameter_server,
    sync_sgd_update,
)
from capabilities.training.ring_allreduce import (
    RingAllReduce,
    chunk_bounds,
    naive_allreduce,
    ring_allreduce,
    ring_bytes,
    tree_allreduce,
)
from capabilities.training.zero import STAGES, ZeroOptimizer, zero_formula_bytes

__all__ = [
    "MODES",
    "STAGES",
    "DataParallel",
    "LeastSquares",
    "PSConfig",
    "PSResult",
    "ParameterServerClient",
    "RingAllReduce",
    "WorkerError",
    "ZeroOptimizer",
    "chunk_bounds",
    "data_parallel_gradient",
    "free_port",
    "launch",
    "naive_allreduce",
    "ring_allreduce",
    "ring_bytes",
    "run_parameter_server",
    "shard_bounds",
    "sync_sgd_update",
    "tree_allreduce",
    "zero_formula_bytes",
]
