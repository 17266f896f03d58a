"""Gang scheduling: a discrete-event cluster simulator with three placement policies.

A cluster is ``racks x nodes_per_rack`` nodes of ``slots_per_node`` slots each. A job needs
``workers`` slots at once; like a data-parallel training job it does nothing until *all* its
workers hold a slot, then runs for its duration, then frees every slot together. Crossing racks
costs bandwidth, so a job spread over ``s`` racks runs ``1 + cross_rack_slowdown * (s - 1)``
times longer.

Policies::

    greedy      every worker is a separate request placed as soon as any slot is free (per-pod
                scheduling, least-loaded node first). A job holds the slots of its placed
                workers while it waits for the rest: two half-placed jobs can hold the whole
                cluster and wait for each other forever, a deadlock.
    gang        all or nothing: the job at the head of a FIFO queue is placed only when all its
                workers fit at once (least-loaded nodes first, so it tends to spread).
    rack_aware  all or nothing, packed: the whole job goes into the fullest rack that still
                fits it (best fit), on as few nodes as possible; else over the fewest racks.

Time is continuous; events (job or worker arrivals, job finishes) are processed in time order
and every policy gets one scheduling pass after all events at the same instant.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Policy = Literal["greedy", "gang", "rack_aware"]
POLICIES: tuple[str, ...] = ("greedy", "gang", "rack_aware")


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster's shape.

    Args:
        racks: Racks (at least 1).
        nodes_per_rack: Nodes in each rack (at least 1).
        slots_per_node: Worker slots on each node (at least 1).
    """

    racks: int
    nodes_per_rack: int
    slots_per_node: int

    def __post_init__(self) -> None:
        for name in ("racks", "nodes_per_rack", "slots_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def nodes(self) -> int:
        return self.racks * self.nodes_per_rack

    @property
    def total_slots(self) -> int:
        return self.nodes * self.slots_per_node

    def rack_of(self, node: int) -> int:
        return node // self.nodes_per_rack


@dataclass(frozen=True)
class Job:
    """A gang job: ``workers`` slots at once for ``duration`` time units (on one rack)."""

    id: int
    arrival: float
    workers: int
    duration: float


@dataclass
class JobRecord:
    """What happened to one job; ``start``/``finish`` stay None for a job that never ran."""

    job: Job
    start: float | None = None
    finish: float | None = None
    nodes: list[int] = field(default_factory=list)
    racks_spanned: int = 0


@dataclass
class SimResult:
    """The outcome of one simulation.

    Attributes:
        policy: The placement policy.
        cluster: The cluster.
        records: One per job, in job order.
        deadlocked: Whether the run stopped in a deadlock.
        end_time: Time of the last event (the deadlock's time when deadlocked).
        timeline: ``(time, busy_slots, held_idle_slots)`` after each scheduling pass; busy slots
            run a started job, held-idle slots are held by workers of a job still waiting.
    """

    policy: str
    cluster: ClusterSpec
    records: list[JobRecord]
    deadlocked: bool
    end_time: float
    timeline: list[tuple[float, int, int]]

    def _integral(self, column: int, until: float) -> float:
        total = 0.0
        for (t0, *v), (t1, *_) in zip(self.timeline, [*self.timeline[1:], (until, 0, 0)], strict=True):
            total += v[column - 1] * max(0.0, min(t1, until) - min(t0, until))
        return total

    def utilization(self, window: float | None = None) -> float:
        """Busy slot-time over ``total_slots * window`` (window defaults to ``end_time``)."""
        window = self.end_time if window is None else window
        if window <= 0:
            return 0.0
        return self._integral(1, window) / (self.cluster.total_slots * window)

    def held_idle_fraction(self, window: float | None = None) -> float:
        """Slot-time held by waiting workers over ``total_slots * window``: reserved, wasted."""
        window = self.end_time if window is None else window
        if window <= 0:
            return 0.0
        return self._integral(2, window) / (self.cluster.total_slots * window)

    def goodput(self, window: float | None = None) -> float:
        """Useful slot-time over ``total_slots * window``: each completed job's workers times
        its one-rack duration, so time lost to cross-rack slowdown or deadlock does not count."""
        window = self.end_time if window is None else window
        if window <= 0:
            return 0.0
        work = sum(r.job.workers * r.job.duration for r in self.completed)
        return work / (self.cluster.total_slots * window)

    @property
    def completed(self) -> list[JobRecord]:
        return [r for r in self.records if r.finish is not None]

    @property
    def mean_wait(self) -> float:
        """Mean of start - arrival over the jobs that started (NaN if none did)."""
        waits = [r.start - r.job.arrival for r in self.records if r.start is not None]
        return float(np.mean(waits)) if waits else float("nan")

    @property
    def mean_jct(self) -> float:
        """Mean job completion time, finish - arrival, over completed jobs (NaN if none)."""
        jcts = [r.finish - r.job.arrival for r in self.completed]
        return float(np.mean(jcts)) if jcts else float("nan")

    @property
    def mean_racks_spanned(self) -> float:
        spans = [r.racks_spanned for r in self.records if r.start is not None]
        return float(np.mean(spans)) if spans else float("nan")


def validate_jobs(jobs: Sequence[Job], cluster: ClusterSpec) -> None:
    """Raises ValueError naming the first job that can never run on ``cluster``."""
    if len(jobs) == 0:
        raise ValueError("jobs is empty: give at least one job")
    for job in jobs:
        if job.workers < 1:
            raise ValueError(f"job {job.id}: workers must be >= 1, got {job.workers}")
        if job.workers > cluster.total_slots:
            raise ValueError(
                f"job {job.id}: workers={job.workers} is larger than the cluster "
                f"(total_slots = racks*nodes_per_rack*slots_per_node = {cluster.total_slots})"
            )
        if job.duration <= 0 or job.arrival < 0:
            raise ValueError(f"job {job.id}: duration must be > 0 and arrival >= 0, got {job}")


def generate_jobs(
    n: int,
    cluster: ClusterSpec,
    *,
    arrival_rate: float,
    worker_choices: Sequence[int],
    worker_probs: Sequence[float] | None = None,
    mean_duration: float = 10.0,
    seed: int = 0,
) -> list[Job]:
    """A seeded workload: Poisson arrivals, gang sizes drawn from ``worker_choices``.

    Args:
        n: Number of jobs (at least 1).
        cluster: The cluster the jobs must fit (every size must be <= its total slots).
        arrival_rate: Jobs per time unit (> 0).
        worker_choices: Possible gang sizes.
        worker_probs: Their probabilities (uniform if None).
        mean_duration: Mean of the exponential job duration (> 0). Default 10.
        seed: Seed of this workload's own generator. Default 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if arrival_rate <= 0 or mean_duration <= 0:
        raise ValueError(f"arrival_rate and mean_duration must be > 0, got {arrival_rate}, {mean_duration}")
    too_big = [w for w in worker_choices if w > cluster.total_slots or w < 1]
    if too_big or not worker_choices:
        raise ValueError(
            f"worker_choices must be gang sizes in [1, total_slots={cluster.total_slots}], got {list(worker_choices)}"
        )
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, size=n))
    sizes = rng.choice(np.asarray(worker_choices), size=n, p=worker_probs)
    durations = rng.exponential(mean_duration, size=n) + 0.1 * mean_duration
    return [Job(i, float(a), int(w), float(d)) for i, (a, w, d) in enumerate(zip(arrivals, sizes, durations, strict=True))]


# --------------------------------------------------------------------------------------------
# Placement rules


def _least_loaded(free: np.ndarray) -> int:
    """The node with the most free slots (lowest index on ties): spreads load."""
    return int(np.argmax(free))


def _spread_place(free: np.ndarray, workers: int) -> list[int]:
    nodes = []
    for _ in range(workers):
        node = _least_loaded(free)
        free[node] -= 1
        nodes.append(node)
    return nodes


def _packed_place(free: np.ndarray, workers: int, cluster: ClusterSpec) -> list[int]:
    rack_free = free.reshape(cluster.racks, cluster.nodes_per_rack).sum(axis=1)
    fitting = [r for r in range(cluster.racks) if rack_free[r] >= workers]
    if fitting:
        # Best fit: the fullest rack that still takes the whole gang keeps big holes for big jobs.
        racks = [min(fitting, key=lambda r: (rack_free[r], r))]
    else:
        racks = sorted(range(cluster.racks), key=lambda r: (-rack_free[r], r))
    nodes: list[int] = []
    for rack in racks:
        members = range(rack * cluster.nodes_per_rack, (rack + 1) * cluster.nodes_per_rack)
        # Fewest nodes: fill the emptiest nodes of the rack first.
        for node in sorted(members, key=lambda m: (-free[m], m)):
            take = min(int(free[node]), workers - len(nodes))
            free[node] -= take
            nodes.extend([node] * take)
            if len(nodes) == workers:
                return nodes
    raise AssertionError("packed placement called without enough free slots")


# --------------------------------------------------------------------------------------------
# The simulator


def simulate(
    jobs: Sequence[Job],
    cluster: ClusterSpec,
    policy: Policy,
    *,
    cross_rack_slowdown: float = 0.5,
    worker_launch_interval: float = 0.05,
) -> SimResult:
    """Simulates ``jobs`` on ``cluster`` under ``policy`` until all finish or a deadlock.

    Args:
        jobs: The workload (each gang must fit the cluster).
        cluster: The cluster.
        policy: ``"greedy"``, ``"gang"`` or ``"rack_aware"``.
        cross_rack_slowdown: Extra duration per additional rack spanned (>= 0). Default 0.5.
        worker_launch_interval: Greedy only: worker ``i`` of a job is requested at
            ``arrival + i * worker_launch_interval`` (pods created one after another), which
            interleaves the workers of jobs that arrive close together. Default 0.05.

    Returns:
        The :class:`SimResult`.

    Raises:
        ValueError: For an unknown policy or a job that can never fit (naming the job).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if cross_rack_slowdown < 0 or worker_launch_interval < 0:
        raise ValueError("cross_rack_slowdown and worker_launch_interval must be >= 0")
    validate_jobs(jobs, cluster)

    free = np.full(cluster.nodes, cluster.slots_per_node, dtype=np.int64)
    records = [JobRecord(j) for j in jobs]
    by_id = {j.id: i for i, j in enumerate(jobs)}
    if len(by_id) != len(jobs):
        raise ValueError("jobs: every job needs a distinct id")
    events: list[tuple[float, int, str, int]] = []
    seq = 0
    for i, job in enumerate(jobs):
        if policy == "greedy":
            for w in range(job.workers):
                heapq.heappush(events, (job.arrival + w * worker_launch_interval, seq, "worker", i))
                seq += 1
        else:
            heapq.heappush(events, (job.arrival, seq, "job", i))
            seq += 1

    queue: deque[int] = deque()  # job indices (gang) or one entry per worker (greedy)
    running: set[int] = set()
    held_idle = 0
    busy = 0
    timeline: list[tuple[float, int, int]] = [(0.0, 0, 0)]
    now = 0.0
    deadlocked = False

    def start(i: int, t: float) -> None:
        nonlocal seq, busy
        rec = records[i]
        rec.start = t
        rec.racks_spanned = len({cluster.rack_of(n) for n in rec.nodes})
        slow = 1.0 + cross_rack_slowdown * (rec.racks_spanned - 1)
        heapq.heappush(events, (t + rec.job.duration * slow, seq, "finish", i))
        seq += 1
        running.add(i)
        busy += rec.job.workers

    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, kind, i = heapq.heappop(events)
            if kind == "finish":
                records[i].finish = now
                running.discard(i)
                busy -= records[i].job.workers
                for node in records[i].nodes:
                    free[node] += 1
            else:
                queue.append(i)

        # One scheduling pass.
        if policy == "greedy":
            while queue and free.sum() > 0:
                i = queue.popleft()
                node = _least_loaded(free)
                free[node] -= 1
                records[i].nodes.append(node)
                held_idle += 1
                if len(records[i].nodes) == records[i].job.workers:
                    held_idle -= records[i].job.workers
                    start(i, now)
        else:
            while queue and free.sum() >= records[queue[0]].job.workers:
                i = queue.popleft()
                w = records[i].job.workers
                records[i].nodes = _spread_place(free, w) if policy == "gang" else _packed_place(free, w, cluster)
                start(i, now)
        timeline.append((now, busy, held_idle))

        # Nothing runs, no slot is free and someone holds slots while waiting: no future event
        # can ever free a slot again.
        if not running and free.sum() == 0 and held_idle > 0:
            deadlocked = True
            break

    return SimResult(policy, cluster, records, deadlocked, now, timeline)


@dataclass
class GangScheduler:
    """A cluster's scheduler as an agent's :class:`envs.api.Scheduler`: ``schedule(jobs)`` simulates them.

    Args:
        cluster: The cluster it schedules onto.
        policy: ``"greedy"``, ``"gang"`` or ``"rack_aware"``. Default "rack_aware".
        cross_rack_slowdown: As in :func:`simulate`. Default 0.5.
        worker_launch_interval: As in :func:`simulate`. Default 0.05.
    """

    cluster: ClusterSpec
    policy: Policy = "rack_aware"
    cross_rack_slowdown: float = 0.5
    worker_launch_interval: float = 0.05

    def schedule(self, jobs: Sequence[Job]) -> SimResult:
        """:func:`simulate` of ``jobs`` on this scheduler's cluster, policy and costs."""
        return simulate(jobs, self.cluster, self.policy, cross_rack_slowdown=self.cross_rack_slowdown,
                        worker_launch_interval=self.worker_launch_interval)


def deadlock_example() -> tuple[list[Job], ClusterSpec]:
    """The smallest picture of the greedy deadlock: two 4-worker gangs on 6 slots.

    Their workers arrive interleaved, each job ends up holding 3 slots and waits for a 4th
    that the other holds. A gang scheduler runs them one after the other.
    """
    cluster = ClusterSpec(racks=1, nodes_per_rack=3, slots_per_node=2)
    return [Job(0, 0.0, 4, 5.0), Job(1, 0.01, 4, 5.0)], cluster
