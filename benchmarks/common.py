"""What every benchmark shares: the --quick flag and the JSON line format.

Each benchmark prints one JSON object per case::

    {"bench": "swarm", "case": "reynolds N=1000", "unit": "agent-steps/s",
     "ours": 1.2e7, "reference": 9.1e4, "ratio": 131.9, "reference_name": "mesa boid_flockers"}

``ratio`` is ours / reference for rates (higher is better) and reference / ours for costs
such as seconds or bytes (``higher_is_better=False``), so a ratio above 1 always means ours wins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    if extra is not None:
        extra(p)
    return p.parse_args()


def emit(bench: str, case: str, unit: str, ours: float, reference: float | None, *,
         reference_name: str, higher_is_better: bool = True, **extra: Any) -> dict[str, Any]:
    """Prints one JSON line comparing ``ours`` with ``reference`` measured in the same run."""
    ratio = None
    if reference not in (None, 0) and ours not in (None, 0):
        ratio = ours / reference if higher_is_better else reference / ours
    line = {"bench": bench, "case": case, "unit": unit, "ours": ours, "reference": reference,
            "ratio": None if ratio is None else round(ratio, 4), "reference_name": reference_name, **extra}
    print(json.dumps(line), flush=True)
    return line


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The smallest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    sys.exit("import this module from a benchmark")
