"""Copies stepped in worker processes: step_async/step_wait give exactly what step gives, half
by half too, and double-buffered training equals training with every copy in one process."""

from __future__ import annotations

from typing import Any

import marl_toy_envs  # noqa: F401  (registers toy/leave-v0 and toy/mixed-v0)
import numpy as np
import pytest
import torch

from marl.mappo import MAPPO, MAPPOConfig
from marl.parallel_batch import ParallelBatch


def _pursuit_pair(num_envs: int, seed: int, max_cycles: int, steps: int) -> tuple[ParallelBatch, ParallelBatch, list[torch.Tensor]]:
    """The same pursuit copies stepped in this process and in 2 workers, reset, and random actions."""
    gen = torch.Generator().manual_seed(seed)
    acts = [torch.randint(0, 5, (num_envs, 8), generator=gen) for _ in range(steps)]
    local = ParallelBatch("sisl/pursuit-v5", num_envs, seed=seed, max_cycles=max_cycles)
    remote = ParallelBatch("sisl/pursuit-v5", num_envs, seed=seed, env_workers=2, max_cycles=max_cycles)
    assert torch.equal(local.reset(seed=seed)[0], remote.reset(seed=seed)[0])
    return local, remote, acts


def _assert_rows_equal(want: tuple[Any, ...], got: tuple[Any, ...], lo: int, hi: int) -> None:
    """``got`` (a step's results for rows lo..hi-1) equals those rows of ``want`` (the whole step's)."""
    for x, y in zip(want[:4], got[:4], strict=True):
        assert torch.equal(x[lo:hi], y)
    for key in ("final_observation", "final_state", "done", "active"):
        assert torch.equal(want[4][key][lo:hi], got[4][key]), key


def test_async_step_in_workers_equals_step_in_one_process() -> None:
    local, remote, acts = _pursuit_pair(4, 1, 5, 12)
    try:
        resets = 0
        for a in acts:  # max_cycles=5: copies finish and reset on the way
            want = local.step(a)
            remote.step_async(a)
            _assert_rows_equal(want, remote.step_wait(), 0, 4)
            assert torch.equal(local.state(), remote.state())
            resets += int(want[4]["done"].sum())
        assert resets == 8, "each of the 4 copies ends an episode of 5 steps twice in 12 steps"
    finally:
        local.close()
        remote.close()


@pytest.mark.parametrize("env_workers", [0, 1])
def test_async_step_out_of_order_is_refused(env_workers: int) -> None:
    batch = ParallelBatch("sisl/pursuit-v5", 2, env_workers=env_workers, max_cycles=5)
    try:
        batch.reset(seed=0)
        with pytest.raises(RuntimeError, match="without step_async"):
            batch.step_wait()
        batch.step_async(torch.zeros(2, 8, dtype=torch.long))
        with pytest.raises(RuntimeError, match="twice"):
            batch.step_async(torch.zeros(2, 8, dtype=torch.long))
        batch.step_wait()
        with pytest.raises(ValueError, match="2 rows"):
            batch.step(torch.zeros(3, 8, dtype=torch.long))
    finally:
        batch.close()


def test_halves_stepped_in_turn_by_workers_equal_whole_steps_in_one_process() -> None:
    # Prepare: 5 copies (halves of 2 and 3 rows) over 2 workers that each own part of both halves.
    local, remote, acts = _pursuit_pair(5, 4, 3, 8)
    try:
        assert remote.parts == [(0, 2), (2, 5)] and remote.env_workers == 2
        for k, a in enumerate(acts):
            want = local.step(a)
            # Execute: both halves in flight at once, collected in either order.
            remote.step_async(a[2:], part=1)
            remote.step_async(a[:2], part=0)
            order = (0, 1) if k % 2 else (1, 0)
            got = {p: remote.step_wait(part=p) for p in order}
            # Assert: each half's rows of the whole step, and the same copies' state after it.
            for p, (lo, hi) in enumerate(remote.parts):
                _assert_rows_equal(want, got[p], lo, hi)
            assert torch.equal(local.state(), remote.state())
        # The workers' checkpoint is the one-process batch's, copy by copy.
        np.testing.assert_equal(remote.get_state(), local.get_state())
        with pytest.raises(RuntimeError, match="in flight"):
            remote.step_async(acts[0][:2], part=0)
            remote.get_state()
    finally:
        local.close()
        remote.close()


def _train(env: str, env_kwargs: dict[str, Any], env_workers: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = MAPPOConfig(env=env, env_kwargs=env_kwargs, backend="parallel", num_envs=5, rollout_steps=7, total_steps=70,
                      num_minibatches=2, update_epochs=2, hidden=16, env_workers=env_workers)
    trainer = MAPPO(cfg, seed=3)
    try:
        return [trainer.train_iteration() for _ in range(trainer.num_updates)], trainer.state_dict()
    finally:
        trainer.env.close()


@pytest.mark.parametrize(("env", "env_kwargs"), [
    ("sisl/pursuit-v5", {"max_cycles": 4, "x_size": 7, "y_size": 7, "n_pursuers": 3, "n_evaders": 2}),  # resets in a rollout
    ("toy/leave-v0", {}),  # agents leave at different steps
    ("toy/mixed-v0", {}),  # a Discrete and a Box group: both kinds of samples
])
def test_double_buffered_training_equals_training_in_one_process(env: str, env_kwargs: dict[str, Any]) -> None:
    # Execute: two updates with every copy in this process, then with two workers stepping the
    # halves in turn (the early half-A actions and the rest of the step sampled apart).
    want_metrics, want = _train(env, env_kwargs, 0)
    got_metrics, got = _train(env, env_kwargs, 2)
    # Assert: the same metrics, networks, optimizer moments, generator and environments, bit for bit.
    assert got_metrics == want_metrics
    assert want_metrics[-1]["episodes"] > 0
    for key in ("obs", "state", "active", "episode_return", "generator"):
        assert torch.equal(got[key], want[key]), key
    for part in ("actor", *(f"critics.{i}" for i in range(len(want["critics"])))):
        sd_want = want["actor"] if part == "actor" else want["critics"][int(part.split(".")[1])]
        sd_got = got["actor"] if part == "actor" else got["critics"][int(part.split(".")[1])]
        for name, tensor in sd_want.items():
            assert torch.equal(sd_got[name], tensor), f"{part}.{name}"
    for opt_want, opt_got in zip(want["optimizers"], got["optimizers"], strict=True):
        for k, st in opt_want["state"].items():
            assert torch.equal(opt_got["state"][k]["exp_avg"], st["exp_avg"])
    np.testing.assert_equal(got["env"], want["env"])


@pytest.mark.parametrize("image_shape", [None, (16, 12, 3)])
def test_a_row_of_a_network_call_depends_on_its_own_inputs_and_the_batch_shape_only(image_shape: Any) -> None:
    # The double-buffered rollout rests on this: half A's early actions come from a call whose
    # half-B rows hold older observations, and must equal that call on the whole batch.
    from marl.networks import Actor

    obs_dim = 16 * 12 * 3 if image_shape else 20
    actor = Actor(3, obs_dim, 5, continuous=False, share_params=True, hidden=16, image_shape=image_shape,
                  generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    whole = torch.rand(7, 3, obs_dim, generator=gen)
    stale = whole.clone()
    stale[3:] = torch.rand(4, 3, obs_dim, generator=gen)
    with torch.no_grad():
        assert torch.equal(actor.distribution(stale).logits[:3], actor.distribution(whole).logits[:3])


_KILLED_TRAINER = """
from marl.parallel_batch import ParallelBatch
import numpy as np, sys, time, torch
env = ParallelBatch("mpe/simple_spread-v3", num_envs=4, seed=0, env_workers=2)
env.reset(seed=0)
print("ready", flush=True)
while True:
    env.step(torch.zeros((4, 3), dtype=torch.long))
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_env_workers_end_when_their_parent_is_killed(sig: str) -> None:
    # A forked worker holds inherited copies of the parent's pipe ends; unless it closes them
    # (and asks for a parent-death signal) it never sees end-of-file and lives on as an orphan.
    import signal
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_TRAINER], stdout=subprocess.PIPE, text=True)
    workers: list[psutil.Process] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == [], f"env workers left running after the parent's {sig}: {[p.pid for p in alive]}"
    finally:
        for p in workers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        proc.wait()
