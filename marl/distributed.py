"""Data-parallel MAPPO: ``workers`` learner processes, one entry point, three ways to start them.

Each learner is an :class:`envs.Agent` whose :class:`envs.api.Communicator` is the project's
ring all-reduce; it steps its own shard of the environments and sums every minibatch's
gradient with the others (:class:`marl.mappo.MAPPO` with ``workers > 1``), so N learners take
the optimizer steps one process takes on the union batch. :func:`learn` is that learner; it
runs inside an initialized ``torch.distributed`` group, however the group was made:

* locally: :func:`run_local` (the project's launcher, gloo on 127.0.0.1, workers die with
  their caller), or ``python -m marl.distributed workers=4 ...``;
* across hosts: ``torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d
  --rdzv-endpoint=HOST:29500 -m marl.distributed workers=4 ...`` on every host (the same
  module reads torchrun's ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``);
* on a Ray cluster: :func:`run_ray`, or ``python -m marl.distributed --ray [--address ADDR]
  [--spread] workers=4 ...``: the learners are one gang in a placement group (STRICT_PACK by
  default, SPREAD by the flag), reserved whole before any learner starts.

The command line takes :class:`marl.mappo.MAPPOConfig` fields as ``key=value`` (values in
YAML; ``env_kwargs.N=3``); rank 0 prints one JSON line per update and, with ``--out DIR``,
saves the policy to ``DIR`` (:func:`marl.load_policy` reads it back).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from marl.mappo import MAPPOConfig


@dataclass
class LearnerJob:
    """What every learner of a run is given (plain data: it travels to other processes and hosts).

    Attributes:
        config: :class:`MAPPOConfig` fields; ``workers`` is the number of learners.
        seed: Seed of the run.
        updates: Updates to run; None: the config's ``total_steps`` worth.
        eval_every: Rank 0 evaluates the greedy policy every this many updates (and at the
            end); 0 never. Evaluation time is left out of ``times``.
        eval_episodes: Episodes per evaluation.
        eval_seed: Reset seed of the evaluator.
        policy_dir: Where rank 0 saves the trained policy; None: not saved.
        return_parameters: Every rank returns its final parameters (to compare them).
    """

    config: dict[str, Any]
    seed: int = 0
    updates: int | None = None
    eval_every: int = 0
    eval_episodes: int = 100
    eval_seed: int = 10_000
    policy_dir: str | None = None
    return_parameters: bool = False


def learn(rank: int, world: int, job: LearnerJob) -> dict[str, Any]:
    """One learner of ``world`` (inside an initialized process group when ``world > 1``).

    Returns:
        ``rank``; ``metrics`` (each update's, the same on every rank), ``evals`` (rank 0),
        ``times`` (wall seconds at the end of each update, evaluations left out), ``cpu_s``
        (this process's CPU seconds at the same points: its work, whatever the other tenants),
        ``allreduce_s`` (seconds in the ring after each update, waiting for the others
        included), ``grad_numel`` (floats summed per minibatch) and with
        ``return_parameters`` the final ``parameters`` (list of tensors).
    """
    import torch

    from capabilities.training.ring_allreduce import RingAllReduce
    from envs.api import Agent, Communicator
    from marl.evaluate import evaluate
    from marl.mappo import MAPPO, make_batched_env

    cfg = MAPPOConfig(**job.config)
    if world != cfg.workers:
        raise ValueError(f"workers = {cfg.workers} but the process group has {world} processes; they must agree")
    agent = Agent(f"learner{rank}", capabilities=[RingAllReduce()])
    trainer = MAPPO(cfg, job.seed, communicator=agent.get(Communicator) if world > 1 else None, rank=rank)
    agent.policy = trainer.greedy_policy
    evaluating = rank == 0 and job.eval_every > 0
    eval_env = make_batched_env(cfg, job.eval_episodes, job.eval_seed) if evaluating else None
    teams = {name: sorted(idx) for name, idx in trainer.teams.items()}
    updates = trainer.num_updates if job.updates is None else job.updates
    metrics, evals, times, ring, cpu = [], [], [], [], []
    paused = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for _ in range(updates):
            m = trainer.train_iteration()
            times.append(time.perf_counter() - t0 - paused)
            cpu.append(time.process_time() - c0)
            ring.append(trainer.allreduce_seconds)
            metrics.append(m)
            u = m["update"]
            if evaluating and (u % job.eval_every == 0 or u == updates):
                t_eval, c_eval = time.perf_counter(), time.process_time()
                evals.append({"update": u, "env_steps": m["env_steps"], **evaluate(agent.act, eval_env, job.eval_seed, teams)})
                paused += time.perf_counter() - t_eval
                c0 += time.process_time() - c_eval
        if rank == 0 and job.policy_dir is not None:
            trainer.save_policy(job.policy_dir)
    finally:
        trainer.env.close()
        if eval_env is not None:
            eval_env.close()
    out: dict[str, Any] = {"rank": rank, "metrics": metrics, "evals": evals, "times": times, "cpu_s": cpu, "allreduce_s": ring,
                           "grad_numel": sum(p.numel() for p in trainer.learnable.parameters()), "num_agents": trainer.num_agents,
                           "threads": torch.get_num_threads()}
    if job.return_parameters:
        out["parameters"] = [p.detach().clone() for p in trainer.learnable.parameters()]
    return out


# --------------------------------------------------------------------------------------------
# Local processes


def run_local(job: LearnerJob, *, timeout_s: float = 3600.0, start_method: str = "forkserver") -> list[dict[str, Any]]:
    """Runs the job's ``workers`` learners as local processes (:func:`capabilities.training.launch`).

    Each learner gets the config's ``threads`` torch threads. Returns each rank's result.
    """
    from capabilities.training.launch import launch

    cfg = MAPPOConfig(**job.config)
    return launch(learn, cfg.workers, job, threads=cfg.threads, timeout_s=timeout_s, start_method=start_method)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# torchrun


def run_torchrun(job: LearnerJob, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Runs this process's learner under ``torchrun`` (its ``RANK``/``WORLD_SIZE``/``MASTER_*``)."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = MAPPOConfig(**job.config)
    torch.set_num_threads(cfg.threads)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        return learn(rank, world, job)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# A Ray gang


def _ray_address() -> tuple[str, int]:
    """This Ray node's address and a port free on it (rank 0's rendezvous)."""
    import ray

    from capabilities.training.launch import free_port

    return ray.util.get_node_ip_address(), free_port()


def _ray_learner(rank: int, world: int, job: LearnerJob, address: str, port: int, loopback: bool,
                 timeout_s: float) -> dict[str, Any]:
    """One learner in its bundle: joins the group at rank 0's address, learns, leaves."""
    import torch
    import torch.distributed as dist

    if loopback:  # every node is on this machine: gloo's pairs on the loopback interface
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(MAPPOConfig(**job.config).threads)
    dist.init_process_group("gloo", init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        return learn(rank, world, job)
    finally:
        dist.destroy_process_group()


def run_ray(job: LearnerJob, *, strategy: str = "STRICT_PACK", cluster: Any = None, place_timeout_s: float = 60.0,
            timeout_s: float = 1800.0) -> dict[str, Any]:
    """Runs the learners on the connected Ray cluster as one gang (``ray.init`` first).

    The gang (one bundle of ``threads`` CPUs per learner) is reserved whole with ``strategy``
    (STRICT_PACK: one node; SPREAD: as many nodes as possible) before any learner starts.

    Args:
        job: The learners' job.
        strategy: A placement strategy of :data:`capabilities.cluster.placement.STRATEGIES`.
        cluster: A :class:`~capabilities.cluster.placement.LocalCluster` (every node on this
            machine: the group talks over loopback); None for a real cluster.
        place_timeout_s: How long to wait for the gang's places.
        timeout_s: The process group's collective timeout.

    Returns:
        ``results`` (each rank's :func:`learn` result) and ``bundle_nodes`` (where each sat).

    Raises:
        TimeoutError: the gang could not be placed whole in ``place_timeout_s``; nothing ran.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from capabilities.cluster.placement import release, reserve_gang, run_in_gang

    cfg = MAPPOConfig(**job.config)
    bundles = [{"CPU": float(cfg.threads)}] * cfg.workers
    gang = reserve_gang(bundles, strategy, cluster=cluster, timeout_s=place_timeout_s)
    if gang is None:
        raise TimeoutError(f"the gang of {cfg.workers} learners ({cfg.threads} CPU each, {strategy}) found no place within "
                           f"{place_timeout_s:g} s; nothing was started")
    try:
        where = ray.remote(_ray_address).options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=gang.placement_group, placement_group_bundle_index=0))
        address, port = ray.get(where.remote())
        loopback = cluster is not None
        if loopback:
            address = "127.0.0.1"
        args = [(r, cfg.workers, job, address, port, loopback, timeout_s) for r in range(cfg.workers)]
        results = run_in_gang(gang, cluster, fn=_ray_learner, args=args)
        return {"results": results, "bundle_nodes": gang.bundle_nodes}
    finally:
        release(gang)


# --------------------------------------------------------------------------------------------
# The command line


def parse_config(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (YAML values, ``env_kwargs.K=V``) as MAPPOConfig fields, validated."""
    import yaml

    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        value = yaml.safe_load(text)
        head, _, sub = key.partition(".")
        if sub:
            data.setdefault(head, {})[sub] = value
        else:
            data[key] = value
    return MAPPOConfig(**data).model_dump()


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def main(argv: list[str] | None = None) -> int:
    """``python -m marl.distributed [--ray [--address A] [--spread]] [--out DIR] [--seed S] key=value ...``."""
    p = argparse.ArgumentParser(prog="python -m marl.distributed", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="*", help="MAPPOConfig fields as key=value (workers=N: the learners)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    p.add_argument("--out", help="directory for the trained policy (written by rank 0)")
    p.add_argument("--ray", action="store_true", help="run the learners as one gang on a Ray cluster")
    p.add_argument("--address", default=None, help="with --ray: the cluster's address (default: a local Ray)")
    p.add_argument("--spread", action="store_true", help="with --ray: SPREAD the gang over nodes (default STRICT_PACK)")
    args = p.parse_args(argv)
    from pydantic import ValidationError

    try:
        config = parse_config(args.config)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        what = f"config key {where!r} = {err.get('input')!r}" if where else "config"
        print(f"marl.distributed: {what} is invalid: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"marl.distributed: {exc}", file=sys.stderr)
        return 2
    job = LearnerJob(config=config, seed=args.seed, policy_dir=args.out)
    if _under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if "workers" not in dict(a.partition("=")[::2] for a in args.config):
            job.config["workers"] = world
        results = [run_torchrun(job)]
    elif args.ray:
        import ray

        ray.init(address=args.address)
        try:
            results = run_ray(job, strategy="SPREAD" if args.spread else "STRICT_PACK")["results"]
        finally:
            ray.shutdown()
    else:
        results = run_local(job)
    for r in results:
        if r["rank"] == 0:
            for m in r["metrics"]:
                print(json.dumps(m), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
