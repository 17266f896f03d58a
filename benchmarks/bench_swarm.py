"""Agent-steps per second of the Reynolds rule vs Mesa's own boid_flockers example, same density.

Cases: ours (numba cell list, synchronous vectorized step) at N = 1e3, 4e3, 1e4, 1e5, 1e6;
our Mesa model (swarm.model.SwarmModel, the same step inside a mesa.Model) at N = 1e3;
Mesa's ``mesa.examples.basic.boid_flockers`` at N = 1e3 and 4e3 (its default density,
100 boids in 100 x 100, and default weights); the fitted exponent of cost vs N; and, where
CUDA is available, the torch path at N = 1e7. Each rate is also given per CPU second
(``ours_cpu``), which is less disturbed by other processes sharing the machine.
"""

from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.common import emit, parse_args
from swarm.engine import advance, initial_state
from swarm.reynolds import Reynolds

DENSITY = 0.01  # Mesa's example: 100 boids in a 100 x 100 box


def _time(fn, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per step, the best of two rounds of ``steps`` steps."""
    best_wall = best_cpu = math.inf
    for _ in range(2):
        w, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn()
        best_wall = min(best_wall, (time.perf_counter() - w) / steps)
        best_cpu = min(best_cpu, (time.process_time() - c) / steps)
    return best_wall, best_cpu


def ours(n: int, steps: int, seed: int = 0) -> tuple[float, float]:
    box = math.sqrt(n / DENSITY)
    rule = Reynolds()
    state = list(initial_state(n, box, np.random.default_rng(seed)))

    def step() -> None:
        state[0], state[1] = advance(state[0], state[1], rule, box)

    step()  # compile (or load the numba cache) outside the timing
    return _time(step, steps)


def our_mesa_model(n: int, steps: int) -> tuple[float, float]:
    from swarm.model import SwarmModel

    model = SwarmModel("reynolds", n, density=DENSITY, seed=0)
    model.step()
    return _time(model.step, steps)


def mesa_example(n: int, steps: int) -> tuple[float, float]:
    from mesa.examples.basic.boid_flockers.model import BoidFlockers

    side = math.sqrt(n / DENSITY)
    model = BoidFlockers(population_size=n, width=side, height=side, seed=0)
    model.step()
    return _time(model.step, steps)


def torch_cuda(n: int, steps: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from swarm.torch_reynolds import reynolds_step

    box = math.sqrt(n / DENSITY)
    rule = Reynolds()
    gen = torch.Generator(device="cuda").manual_seed(0)
    pos = torch.rand((n, 2), device="cuda", generator=gen, dtype=torch.float32) * box
    ang = (torch.rand(n, device="cuda", generator=gen) * 2 - 1) * math.pi
    dirs = torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    pos, dirs = reynolds_step(pos, dirs, box, rule)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        pos, dirs = reynolds_step(pos, dirs, box, rule)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    sizes = [1_000, 4_000, 10_000, 100_000, 1_000_000]
    steps = {1_000: 50, 4_000: 20, 10_000: 10, 100_000: 5, 1_000_000: 2} if quick else \
            {1_000: 200, 4_000: 100, 10_000: 50, 100_000: 20, 1_000_000: 5}
    mesa_steps = {1_000: 2, 4_000: 1} if quick else {1_000: 5, 4_000: 2}

    mesa = {n: mesa_example(n, s) for n, s in mesa_steps.items()}
    per_step = {}
    for n in sizes:
        wall, cpu = ours(n, steps[n])
        per_step[n] = wall
        ref = mesa.get(n)
        emit("swarm", f"reynolds N={n}", "agent-steps/s", n / wall, None if ref is None else n / ref[0],
             reference_name=f"mesa boid_flockers N={n}" if ref else "none at this N (Mesa's example is O(N^2))",
             ours_cpu=n / cpu, reference_cpu=None if ref is None else n / ref[1],
             target=1e2 * n / ref[0] if ref is not None and n == 1_000 else (5e6 if n == 100_000 else None))
    wall, cpu = our_mesa_model(1_000, steps[1_000])
    emit("swarm", "SwarmModel (mesa.Model) reynolds N=1000", "agent-steps/s", 1_000 / wall, 1_000 / mesa[1_000][0],
         reference_name="mesa boid_flockers N=1000", ours_cpu=1_000 / cpu, reference_cpu=1_000 / mesa[1_000][1])
    ns = np.array(sizes, dtype=float)
    slope = float(np.polyfit(np.log(ns), np.log([per_step[n] for n in sizes]), 1)[0])
    emit("swarm", "cost exponent, seconds per step ~ N^k, N=1e3..1e6", "exponent", round(slope, 3), 1.0,
         reference_name="linear", higher_is_better=False)
    n_gpu = 10_000_000
    seconds = torch_cuda(n_gpu, 3 if quick else 10)
    emit("swarm", f"reynolds torch CUDA N={n_gpu}", "agent-steps/s", None if seconds is None else n_gpu / seconds,
         None, reference_name="unmeasured: CUDA not available" if seconds is None else "none")


if __name__ == "__main__":
    main()
