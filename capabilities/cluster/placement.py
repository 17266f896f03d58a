"""Real gang placement on Ray placement groups, on a local multi-node Ray cluster.

A Ray placement group is a gang reservation: a list of resource bundles reserved atomically
(two-phase commit across raylets), so a group that cannot be placed whole reserves nothing and
stays PENDING. The strategy says how the bundles may be spread:

    STRICT_PACK    every bundle on one node (or nothing)
    PACK           as few nodes as possible, spilling over when one node is full
    SPREAD         as many nodes as possible, sharing nodes when it must
    STRICT_SPREAD  every bundle on a different node (or nothing)

:func:`local_cluster` starts a real multi-node cluster in this machine with
``ray.cluster_utils.Cluster`` (one raylet per simulated node, each with its own CPUs and a
custom resource ``nodeK`` naming it) and always shuts it down. Past one machine the same calls
run against ``ray.init(address=...)`` of a real cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

STRATEGIES: tuple[str, ...] = ("STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD")


@dataclass
class LocalCluster:
    """A running local Ray cluster.

    Attributes:
        address: The GCS address ``ray.init`` connected to.
        node_names: Ray node id -> ``"node0"``, ``"node1"``, ... in the order they were added.
        cpus_per_node: CPUs each node offers.
    """

    address: str
    node_names: dict[str, str]
    cpus_per_node: int

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    @property
    def total_cpus(self) -> int:
        return self.num_nodes * self.cpus_per_node


@contextlib.contextmanager
def local_cluster(num_nodes: int = 3, cpus_per_node: int = 2, *, object_store_mb: int = 80) -> Iterator[LocalCluster]:
    """Starts a ``num_nodes``-node Ray cluster on this machine, connects to it, shuts it down.

    Args:
        num_nodes: Nodes (the head counts as one), 1 to 8. Default 3.
        cpus_per_node: Logical CPUs per node, 1 to 64. Default 2.
        object_store_mb: Object store per node in MiB (small: these groups move no data).

    Yields:
        The :class:`LocalCluster`; ``ray`` is initialized against it inside the block.
    """
    if not 1 <= num_nodes <= 8:
        raise ValueError(f"num_nodes must be in [1, 8], got {num_nodes}")
    if not 1 <= cpus_per_node <= 64:
        raise ValueError(f"cpus_per_node must be in [1, 64], got {cpus_per_node}")
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("ray is already initialized in this process; local_cluster starts its own")
    store = object_store_mb * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "resources": {"node0": 1.0},
                        "object_store_memory": store, "include_dashboard": False},
    )
    try:
        for k in range(1, num_nodes):
            cluster.add_node(num_cpus=cpus_per_node, resources={f"node{k}": 1.0}, object_store_memory=store)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        names: dict[str, str] = {}
        for node in ray.nodes():
            if node["Alive"]:
                label = next(r for r in node["Resources"] if r.startswith("node") and r[4:].isdigit())
                names[node["NodeID"]] = label
        yield LocalCluster(cluster.address, dict(sorted(names.items(), key=lambda kv: int(kv[1][4:]))), cpus_per_node)
    finally:
        ray.shutdown()
        cluster.shutdown()


@dataclass
class GangReservation:
    """A placed gang: the placement group and the node each bundle was reserved on."""

    placement_group: Any
    strategy: str
    bundles: list[dict[str, float]]
    bundle_nodes: list[str]


def _validate(bundles: Sequence[dict[str, float]], strategy: str, cluster: LocalCluster | None) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if len(bundles) == 0:
        raise ValueError("bundles is empty: a gang needs at least one bundle")
    for i, b in enumerate(bundles):
        if not b or any(v <= 0 for v in b.values()):
            raise ValueError(f"bundles[{i}] must map resource names to amounts > 0, got {b!r}")
    if cluster is not None:
        need = sum(b.get("CPU", 0.0) for b in bundles)
        if need > cluster.total_cpus:
            raise ValueError(
                f"bundles need {need:g} CPUs in total, more than the whole cluster has "
                f"({cluster.num_nodes} nodes x {cluster.cpus_per_node} CPUs = {cluster.total_cpus})"
            )
        if strategy == "STRICT_SPREAD" and len(bundles) > cluster.num_nodes:
            raise ValueError(
                f"bundles: STRICT_SPREAD of {len(bundles)} bundles needs that many nodes; the cluster has {cluster.num_nodes}"
            )


def reserve_gang(
    bundles: Sequence[dict[str, float]],
    strategy: str,
    *,
    cluster: LocalCluster | None = None,
    timeout_s: float = 5.0,
) -> GangReservation | None:
    """Reserves ``bundles`` all at once with ``strategy``, or nothing.

    Args:
        bundles: Resource bundles, e.g. ``[{"CPU": 1}] * 4`` for a 4-worker gang.
        strategy: One of :data:`STRATEGIES`.
        cluster: When given, a gang larger than the whole cluster is refused up front.
        timeout_s: How long to wait for the group to be placed (> 0). Default 5.

    Returns:
        The reservation, or None if the gang could not be placed within ``timeout_s``; then the
        pending group is removed (it held nothing: Ray commits a group's bundles together).

    Raises:
        ValueError: For an unknown strategy, empty or invalid bundles, or a gang larger than
            ``cluster``.
    """
    _validate(bundles, strategy, cluster)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    from ray.util.placement_group import placement_group, remove_placement_group

    specs = [dict(b) for b in bundles]
    pg = placement_group(specs, strategy=strategy)
    if not pg.wait(timeout_seconds=timeout_s):
        remove_placement_group(pg)
        return None
    return GangReservation(pg, strategy, specs, bundle_node_names(pg, cluster))


def bundle_node_names(pg: Any, cluster: LocalCluster | None = None) -> list[str]:
    """The node each bundle of a placed group sits on (``nodeK`` names when ``cluster`` is given)."""
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(pg)["bundles_to_node_id"]
    ids = [table[i] for i in sorted(table)]
    return [cluster.node_names.get(n, n) for n in ids] if cluster is not None else ids


def _where_am_i() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def run_in_gang(reservation: GangReservation, cluster: LocalCluster | None = None,
                fn: Callable[..., Any] | None = None, args: Sequence[Sequence[Any]] | None = None) -> list[Any]:
    """Runs one task in each bundle of ``reservation`` and returns what each returned.

    Args:
        reservation: A placed gang.
        cluster: Maps node ids to ``nodeK`` names when ``fn`` is None.
        fn: The task body (picklable); None runs a task that reports the node it ran on.
        args: ``fn``'s positional arguments in each bundle (e.g. its rank); None: none.

    Returns:
        One result per bundle, in bundle order.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    task = ray.remote(fn or _where_am_i)
    if args is not None and len(args) != len(reservation.bundles):
        raise ValueError(f"args has {len(args)} entries for {len(reservation.bundles)} bundles")
    refs = [
        task.options(
            num_cpus=bundle.get("CPU", 0.0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=reservation.placement_group, placement_group_bundle_index=i),
        ).remote(*(args[i] if args is not None else ()))
        for i, bundle in enumerate(reservation.bundles)
    ]
    out = ray.get(refs)
    if fn is None and cluster is not None:
        out = [cluster.node_names.get(n, n) for n in out]
    return out


def release(reservation: GangReservation) -> None:
    """Removes the group, returning its resources to the cluster."""
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(reservation.placement_group)
