"""Run the points of a parameter sweep in parallel on Ray, or in this process.

A local Ray (``ray.init(num_cpus=...)``) by default; ``address`` joins an existing cluster
(``ray.init(address=...)``). Every point carries its own seed, so the results do not depend on
where or in which order the points run. A Ray started here is shut down before returning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


def run_points(fn: Callable[..., Any], points: Sequence[dict[str, Any]], *, parallel: bool = True,
               address: str | None = None, num_cpus: int = 2) -> list[Any]:
    """``[fn(**p) for p in points]``, on Ray tasks when ``parallel``.

    Args:
        fn: A picklable module-level function.
        points: Keyword arguments of each call.
        parallel: Run on Ray. Default True. False runs in this process, in order.
        address: A Ray cluster's address (``ray://host:10001`` or ``auto``). Default None: a
            local Ray with ``num_cpus`` CPUs.
        num_cpus: CPUs of the local Ray. Default 2.

    Returns:
        The results in the order of ``points``.
    """
    if not parallel or len(points) == 0:
        return [fn(**p) for p in points]
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # Usage stats would try to reach the network; the dashboard is not needed for tasks.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        task = ray.remote(num_cpus=1)(fn)
        return ray.get([task.remote(**p) for p in points])
    finally:
        if started_here:
            ray.shutdown()
