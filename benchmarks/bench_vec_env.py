"""Environment steps per second of the batched simple_spread vs VMAS and mpe2, same run.

Random discrete actions, N=3, 25-step episodes (every environment resets itself). Ours is
``envs.make_vec("mpe/simple_spread-v3")`` (float32, matches mpe2 within 1e-5); the references
are VMAS's ``simple_spread`` (``vmas.make_env``, the vectorized MPE port, not equal to mpe2)
at the same batch sizes and mpe2's own ``parallel_env`` (one environment, stepped in Python).
One env step = one step of one environment (all N agents act).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import emit, parse_args

N_AGENTS = 3


def _best_rate(step: Callable[[int], object], num_envs: int, steps: int, chunks: int = 3) -> float:
    """The best env-steps/s over ``chunks`` equal stretches of ``steps`` (damps load noise)."""
    per = max(1, steps // chunks)
    best = 0.0
    for c in range(chunks):
        t0 = time.perf_counter()
        for t in range(c * per, (c + 1) * per):
            step(t)
        best = max(best, num_envs * per / (time.perf_counter() - t0))
    return best


def ours_rate(num_envs: int, steps: int) -> float:
    import envs

    env = envs.make_vec("mpe/simple_spread-v3", num_envs=num_envs, N=N_AGENTS)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 5, (steps, num_envs, N_AGENTS), generator=gen)
    for t in range(5):
        env.step(actions[t])
    return _best_rate(lambda t: env.step(actions[t]), num_envs, steps)


def vmas_rate(num_envs: int, steps: int) -> float | None:
    try:
        import vmas
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = vmas.make_env("simple_spread", num_envs=num_envs, device="cpu", continuous_actions=False,
                            n_agents=N_AGENTS, max_steps=25, seed=0)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 5, (steps, N_AGENTS, num_envs), generator=gen)

    def step(t: int) -> None:
        _, _, dones, _ = env.step([actions[t, i] for i in range(N_AGENTS)])
        # VMAS leaves resetting finished environments to the caller: all at once when all
        # finished (the usual case, 25-step episodes started together), else one by one.
        if bool(dones.all()):
            env.reset()
        elif bool(dones.any()):
            for k in torch.nonzero(dones).flatten().tolist():
                env.reset_at(k)

    for t in range(5):
        step(t)
    return _best_rate(step, num_envs, steps)


def mpe2_rate(steps: int) -> float:
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(N=N_AGENTS)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, (steps, N_AGENTS))
    t0 = time.perf_counter()
    for t in range(steps):
        if not env.agents:
            env.reset()
        env.step({a: int(actions[t, i]) for i, a in enumerate(env.possible_agents)})
    return steps / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = (1, 64, 1024, 4096)
    steps = {1: 300, 64: 150, 1024: 60, 4096: 30} if args.quick else {1: 3000, 64: 1500, 1024: 600, 4096: 300}
    reference = mpe2_rate(500 if args.quick else 5000)
    emit("vec_env", "mpe2 parallel_env vs ours B=1", "env-steps/s", ours_rate(1, steps[1]), reference,
         reference_name="mpe2 simple_spread_v3.parallel_env")
    for b in sizes:
        emit("vec_env", f"simple_spread N=3 B={b}", "env-steps/s", ours_rate(b, steps[b]), vmas_rate(b, steps[b]),
             reference_name="vmas simple_spread (vmas.make_env)", mpe2_env_steps_per_s=reference)


if __name__ == "__main__":
    main()
