"""The data experiment kinds: tiny smoke runs, determinism, and bad config values exit 2."""

import pytest

from experiments import UserError, runner


def test_shuffle_kind_runs_checks_itself_and_repeats_exactly(tmp_path):
    cfg = {"kind": "shuffle", "num_partitions": 3, "map_tasks": 3, "workers": 0}
    a = runner.run(cfg, out=tmp_path / "a", quiet=True)
    b = runner.run(cfg, out=tmp_path / "b", quiet=True)
    assert a.metrics_path.read_bytes() == b.metrics_path.read_bytes()
    rows = a.read_metrics()
    assert [r["equals_reference"] for r in rows[:2]] == [True, True]
    parts = [r for r in rows if "partition" in r]
    assert sum(r["keys"] for r in parts) == rows[0]["keys"]
    s = a.read_summary()
    assert s["figures"] == ["figures/partition_sizes.png"]
    assert s["headline"]["bytes_shuffled_combiner"] < s["headline"]["bytes_shuffled_no_combiner"]


@pytest.mark.slow
def test_funnel_kind_smoke(tmp_path):
    cfg = {"kind": "funnel", "pool_size": 20, "num_queries": 2, "k": 3, "candidates": [3, 10], "stage1": ["bm25"]}
    rd = runner.run(cfg, out=tmp_path / "f", quiet=True)
    rows = rd.read_metrics()
    assert [r["K"] for r in rows] == [3, 10]
    for r in rows:
        assert r["final_recall_at_k"] <= r["stage1_recall_at_K"]
    assert rd.read_summary()["figures"] == ["figures/funnel.png"]


@pytest.mark.parametrize("overrides,match", [
    ({"pool_size": 100000}, r"'pool_size' = 100000 is invalid: .*larger than the corpus"),
    ({"pool_size": 50, "candidates": [10, 60]}, r"'candidates' = \[10, 60\] is invalid: .*K = \[60\]"),
    ({"k": 20, "candidates": [10]}, r"'candidates' = \[10\] is invalid: .*K = \[10\]"),
    ({"stage1": ["ivf"], "nlist": 4, "nprobe": 8}, r"'nprobe' = 8 is invalid: .*need nprobe <= nlist"),
])
def test_funnel_bad_values_are_user_errors(tmp_path, overrides, match):
    with pytest.raises(UserError, match=match):
        runner.run({"kind": "funnel", **overrides}, out=tmp_path / "x", quiet=True)


def test_shuffle_bad_values_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="num_partitions"):
        runner.run({"kind": "shuffle", "num_partitions": 0}, out=tmp_path / "x", quiet=True)
    with pytest.raises(UserError, match="'map_tasks' = 200 is invalid: .*larger than the corpus"):
        runner.run({"kind": "shuffle", "map_tasks": 200}, out=tmp_path / "y", quiet=True)
