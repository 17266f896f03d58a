"""The gang-scheduling simulator: the greedy deadlock, all-or-nothing, rack packing, bad input."""

import pytest

from capabilities.cluster import gang as G


def test_greedy_deadlocks_on_the_two_gang_example_and_gang_policies_do_not():
    jobs, cluster = G.deadlock_example()
    greedy = G.simulate(jobs, cluster, "greedy")
    assert greedy.deadlocked
    # Workers requested at 0, .01, .05, .06, .10, .11: each job holds 3 of the 6 slots.
    assert greedy.end_time == pytest.approx(0.11)
    assert [len(r.nodes) for r in greedy.records] == [3, 3]
    assert greedy.completed == [] and greedy.timeline[-1][1:] == (0, 6)
    for policy in ("gang", "rack_aware"):
        res = G.simulate(jobs, cluster, policy)
        assert not res.deadlocked
        # One after the other: job 0 runs [0, 5], job 1 waits until 5 and runs [5, 10].
        assert [(r.start, r.finish) for r in res.records] == [(0.0, 5.0), (5.0, 10.0)]
        assert res.mean_wait == pytest.approx((0 + 4.99) / 2)
        assert res.mean_jct == pytest.approx((5 + 9.99) / 2)
        # 4 of 6 slots busy for 10 time units.
        assert res.utilization() == pytest.approx(4 / 6)


def test_no_slot_is_ever_overcommitted_and_every_job_finishes_under_gang_policies():
    cluster = G.ClusterSpec(racks=3, nodes_per_rack=2, slots_per_node=4)
    jobs = G.generate_jobs(60, cluster, arrival_rate=1.0, worker_choices=[1, 3, 8, 16], seed=3)
    for policy in ("gang", "rack_aware"):
        res = G.simulate(jobs, cluster, policy)
        assert not res.deadlocked and len(res.completed) == len(jobs)
        for _t, busy, held in res.timeline:
            assert 0 <= busy <= cluster.total_slots and held == 0
        # At every start instant the running jobs' slots on each node fit the node.
        for rec in res.records:
            alive = [r for r in res.records if r.start <= rec.start < r.finish]
            for node in range(cluster.nodes):
                assert sum(r.nodes.count(node) for r in alive) <= cluster.slots_per_node
            assert rec.start >= rec.job.arrival and len(rec.nodes) == rec.job.workers


def test_gang_queue_is_fifo_all_or_nothing():
    cluster = G.ClusterSpec(1, 1, 4)
    jobs = [G.Job(0, 0.0, 3, 10.0), G.Job(1, 1.0, 2, 1.0), G.Job(2, 2.0, 1, 1.0)]
    res = G.simulate(jobs, cluster, "gang")
    # Job 1 cannot fit beside job 0 (needs 2, 1 free) and job 2 waits behind it (strict FIFO).
    assert [(r.start, r.finish) for r in res.records] == [(0.0, 10.0), (10.0, 11.0), (10.0, 11.0)]


def test_rack_aware_keeps_a_gang_in_one_rack_where_spread_placement_does_not():
    cluster = G.ClusterSpec(racks=2, nodes_per_rack=2, slots_per_node=2)
    jobs = [G.Job(0, 0.0, 4, 10.0)]
    spread = G.simulate(jobs, cluster, "gang", cross_rack_slowdown=0.5)
    packed = G.simulate(jobs, cluster, "rack_aware", cross_rack_slowdown=0.5)
    assert spread.records[0].racks_spanned == 2 and spread.records[0].finish == pytest.approx(15.0)
    assert packed.records[0].racks_spanned == 1 and packed.records[0].finish == pytest.approx(10.0)
    assert sorted(packed.records[0].nodes) == [0, 0, 1, 1]


def test_rack_aware_best_fit_chooses_the_fullest_rack_that_fits():
    cluster = G.ClusterSpec(racks=2, nodes_per_rack=1, slots_per_node=4)
    jobs = [G.Job(0, 0.0, 3, 100.0), G.Job(1, 1.0, 1, 100.0), G.Job(2, 2.0, 4, 1.0)]
    res = G.simulate(jobs, cluster, "rack_aware")
    # Job 1 fills rack 0's last slot, so job 2 (4 workers) still finds rack 1 empty.
    assert res.records[1].nodes == [0] and res.records[2].start == 2.0


def test_workload_generator_is_seeded():
    cluster = G.ClusterSpec(2, 2, 2)
    a = G.generate_jobs(20, cluster, arrival_rate=1.0, worker_choices=[1, 2, 8], seed=5)
    b = G.generate_jobs(20, cluster, arrival_rate=1.0, worker_choices=[1, 2, 8], seed=5)
    c = G.generate_jobs(20, cluster, arrival_rate=1.0, worker_choices=[1, 2, 8], seed=6)
    assert a == b and a != c


def test_bad_input_names_the_parameter():
    cluster = G.ClusterSpec(2, 2, 2)
    with pytest.raises(ValueError, match=r"workers=9 is larger than the cluster \(total_slots"):
        G.simulate([G.Job(0, 0.0, 9, 1.0)], cluster, "gang")
    with pytest.raises(ValueError, match="policy must be one of greedy, gang, rack_aware"):
        G.simulate([G.Job(0, 0.0, 1, 1.0)], cluster, "fifo")
    with pytest.raises(ValueError, match="jobs is empty"):
        G.simulate([], cluster, "gang")
    with pytest.raises(ValueError, match="slots_per_node must be an integer >= 1"):
        G.ClusterSpec(1, 1, 0)
    with pytest.raises(ValueError, match="worker_choices must be gang sizes in"):
        G.generate_jobs(3, cluster, arrival_rate=1.0, worker_choices=[16])


def test_scheduler_through_an_agent_equals_the_direct_simulation():
    from envs.api import Agent, Scheduler

    cluster = G.ClusterSpec(2, 2, 4)
    jobs = G.generate_jobs(40, cluster, arrival_rate=2.0, worker_choices=[1, 2, 4, 8], seed=3)
    for policy in G.POLICIES:
        agent = Agent(f"scheduler/{policy}", capabilities=[
            G.GangScheduler(cluster, policy, cross_rack_slowdown=0.7, worker_launch_interval=0.1)])
        got = agent.get(Scheduler).schedule(jobs)
        ref = G.simulate(jobs, cluster, policy, cross_rack_slowdown=0.7, worker_launch_interval=0.1)
        assert (got.deadlocked, got.end_time, got.timeline) == (ref.deadlocked, ref.end_time, ref.timeline)
        assert [(r.start, r.finish, r.nodes) for r in got.records] == [(r.start, r.finish, r.nodes) for r in ref.records]
    ex_jobs, ex_cluster = G.deadlock_example()
    assert Agent("greedy", capabilities=[G.GangScheduler(ex_cluster, "greedy")]).get(Scheduler).schedule(ex_jobs).deadlocked
