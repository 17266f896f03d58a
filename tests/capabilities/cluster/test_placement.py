"""Real gang placement on Ray placement groups in a local 3-node Ray cluster (one per module)."""

import collections

import pytest

pytest.importorskip("ray")

from capabilities.cluster import placement as P  # noqa: E402


@pytest.mark.slow
def test_placement_kind_smoke(tmp_path):
    # Runs before the module's cluster exists: the kind starts and stops its own.
    from experiments import runner

    cfg = {"kind": "gang_placement_ray", "num_nodes": 2, "cpus_per_node": 2, "gang_size": 2,
           "strategies": ["STRICT_PACK", "SPREAD"], "timeout_s": 2.0}
    rd = runner.run(cfg, out=tmp_path / "r", quiet=True)
    rows = {r["strategy"]: r for r in rd.read_metrics()}
    assert rows["STRICT_PACK"]["bundles_per_node_sorted"] == [2]
    assert rows["SPREAD"]["bundles_per_node_sorted"] == [1, 1]
    assert rows["STRICT_PACK x3 (larger than a node)"] == {"strategy": "STRICT_PACK x3 (larger than a node)",
                                                          "placed": False, "reserved_nothing": True}
    import ray

    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    # Three nodes with 2 CPUs each; local_cluster shuts Ray down even when a test fails.
    with P.local_cluster(num_nodes=3, cpus_per_node=2) as c:
        yield c


def cpus_free(expect=None, within_s=10.0):
    """Free CPUs; with ``expect``, polls until they reach it (resource reports lag a little)."""
    import time

    import ray

    deadline = time.monotonic() + within_s
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if expect is None or free == expect or time.monotonic() > deadline:
            return free
        time.sleep(0.1)


def test_cluster_has_three_named_nodes(cluster):
    import ray

    assert sorted(cluster.node_names.values()) == ["node0", "node1", "node2"]
    assert ray.cluster_resources()["CPU"] == 6.0


def test_strict_pack_puts_every_bundle_and_its_task_on_one_node(cluster):
    res = P.reserve_gang([{"CPU": 1}] * 2, "STRICT_PACK", cluster=cluster)
    try:
        assert res is not None and len(set(res.bundle_nodes)) == 1
        assert P.run_in_gang(res, cluster) == res.bundle_nodes
    finally:
        P.release(res)


def test_spread_and_strict_spread_use_distinct_nodes(cluster):
    for strategy in ("SPREAD", "STRICT_SPREAD"):
        res = P.reserve_gang([{"CPU": 1}] * 3, strategy, cluster=cluster)
        try:
            assert sorted(res.bundle_nodes) == ["node0", "node1", "node2"]
            assert P.run_in_gang(res, cluster) == res.bundle_nodes
        finally:
            P.release(res)


def test_pack_uses_the_fewest_nodes(cluster):
    res = P.reserve_gang([{"CPU": 1}] * 3, "PACK", cluster=cluster)
    try:
        # 3 one-CPU bundles on 2-CPU nodes: two nodes, split 2 + 1.
        assert sorted(collections.Counter(res.bundle_nodes).values()) == [1, 2]
    finally:
        P.release(res)


def test_a_gang_that_does_not_fit_reserves_nothing(cluster):
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    before = cpus_free(expect=6.0)
    assert before == 6.0
    # 4 CPUs fit the cluster (6) but no single node (2): STRICT_PACK cannot be placed.
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_PACK")
    try:
        assert not pg.wait(timeout_seconds=2)
        assert placement_group_table(pg)["state"] == "PENDING"
        assert cpus_free() == before
    finally:
        remove_placement_group(pg)
    assert P.reserve_gang([{"CPU": 1}] * 4, "STRICT_PACK", cluster=cluster, timeout_s=1) is None
    assert cpus_free() == before


def test_a_gang_blocked_by_another_reserves_nothing_and_fits_once_that_one_leaves(cluster):
    holder = P.reserve_gang([{"CPU": 2}] * 2, "STRICT_SPREAD", cluster=cluster)
    try:
        left = cpus_free(expect=2.0)
        assert left == 2.0
        assert P.reserve_gang([{"CPU": 1}] * 3, "PACK", cluster=cluster, timeout_s=1) is None
        assert cpus_free() == left
    finally:
        P.release(holder)
    later = P.reserve_gang([{"CPU": 1}] * 3, "PACK", cluster=cluster)
    assert later is not None
    P.release(later)


def test_bad_input_names_the_parameter(cluster):
    with pytest.raises(ValueError, match="bundles need 7 CPUs in total, more than the whole cluster"):
        P.reserve_gang([{"CPU": 1}] * 7, "PACK", cluster=cluster)
    with pytest.raises(ValueError, match="strategy must be one of STRICT_PACK"):
        P.reserve_gang([{"CPU": 1}], "TIGHT", cluster=cluster)
    with pytest.raises(ValueError, match="bundles is empty"):
        P.reserve_gang([], "PACK", cluster=cluster)
    with pytest.raises(ValueError, match="STRICT_SPREAD of 4 bundles needs that many nodes"):
        P.reserve_gang([{"CPU": 0.5}] * 4, "STRICT_SPREAD", cluster=cluster)


def test_a_gang_of_mappo_learners_trains_as_one_process(cluster):
    # Two learners placed as one STRICT_PACK gang (the default) train over the ring exactly as
    # one process on all their environments would.
    from marl.distributed import LearnerJob, run_ray
    from marl.mappo import MAPPO, MAPPOConfig

    cfg = MAPPOConfig(num_envs=4, rollout_steps=10, total_steps=80, num_minibatches=2, update_epochs=1, hidden=8,
                      dtype="float64")
    job = LearnerJob(config=cfg.model_copy(update={"workers": 2}).model_dump(), seed=1, return_parameters=True)
    out = run_ray(job, cluster=cluster, place_timeout_s=30, timeout_s=120)
    assert len(out["bundle_nodes"]) == 2 and len(set(out["bundle_nodes"])) == 1
    ref = MAPPO(cfg, seed=1)
    for _ in range(ref.num_updates):
        ref.train_iteration()
    for result in out["results"]:
        assert max((a - b).abs().max().item() for a, b in zip(result["parameters"], ref.learnable.parameters(), strict=True)) <= 1e-12
    assert cpus_free(expect=6.0) == 6.0  # the gang was released
    # Three learners of 2 CPUs cannot share one 2-CPU node: nothing starts, nothing stays reserved.
    big = LearnerJob(config=cfg.model_copy(update={"workers": 3, "threads": 2}).model_dump())
    with pytest.raises(TimeoutError, match="found no place within 1 s; nothing was started"):
        run_ray(big, strategy="STRICT_PACK", cluster=cluster, place_timeout_s=1)
    assert cpus_free(expect=6.0) == 6.0
