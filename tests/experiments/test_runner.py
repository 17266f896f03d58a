"""Run directories: determinism, atomicity, crash marking, resume."""

import json

import pytest
import yaml

from experiments import RunDir, UserError, runner


def walk(**overrides):
    return {"kind": "test_walk", **overrides}


def test_run_directory_layout(tmp_path):
    rd = runner.run(walk(), out=tmp_path / "r", quiet=True)
    assert {p.name for p in rd.path.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "figures", "checkpoints", "log.txt"}
    assert yaml.safe_load(rd.config_path.read_text()) == {
        "kind": "test_walk", "seed": 0, "description": "", "imports": [], "steps": 12, "checkpoint_every": 3,
        "optim": {"lr": 0.5, "schedule": "const"},
    }
    s = rd.read_summary()
    assert s["status"] == "complete" and s["axis"] == "training" and s["figures"] == ["figures/walk.png"]
    assert [m["step"] for m in rd.read_metrics()] == list(range(12))
    assert s["headline"]["final_x"] == rd.read_metrics()[-1]["x"]
    assert not list(rd.path.rglob(".*tmp*")), "temporary files left behind"


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    a = runner.run(walk(), out=tmp_path / "a", quiet=True)
    b = runner.run(walk(), out=tmp_path / "b", quiet=True)
    c = runner.run(walk(), out=tmp_path / "c", seed=1, quiet=True)
    assert a.metrics_path.read_bytes() == b.metrics_path.read_bytes()
    assert a.metrics_path.read_bytes() != c.metrics_path.read_bytes()


def test_shipped_config_is_deterministic(tmp_path):
    a = runner.run("rollout_spread", out=tmp_path / "a", overrides=["episodes=3"], quiet=True)
    b = runner.run("rollout_spread", out=tmp_path / "b", overrides=["episodes=3"], quiet=True)
    assert len(a.read_metrics()) == 6
    assert a.metrics_path.read_bytes() == b.metrics_path.read_bytes()


def test_crash_is_marked_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = runner.run(walk(), out=tmp_path / "full", quiet=True)

    monkeypatch.setenv("AGORA_TEST_CRASH_AT", "7")  # after the checkpoint at step 6, two lines past it
    with pytest.raises(RuntimeError, match="crash injected"):
        runner.run(walk(), out=tmp_path / "crashed", quiet=True)
    crashed = RunDir(tmp_path / "crashed")
    s = crashed.read_summary()
    assert s["status"] == "failed" and "crash injected at step 7" in s["error"]
    assert len(crashed.read_metrics()) == 8
    with crashed.metrics_path.open("a") as fh:  # a line torn by the crash
        fh.write('{"step": 8, "x"')

    monkeypatch.delenv("AGORA_TEST_CRASH_AT")
    resumed = runner.resume(tmp_path / "crashed", quiet=True)
    assert resumed.read_summary()["status"] == "complete"
    assert resumed.read_summary()["resumed"] == 1
    assert resumed.metrics_path.read_bytes() == full.metrics_path.read_bytes()


def test_resume_of_a_finished_run_is_refused_and_changes_nothing(tmp_path):
    rd = runner.run(walk(steps=3), out=tmp_path / "r", quiet=True)
    before = {p: p.read_bytes() for p in rd.path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already finished"):
        runner.resume(rd.path)
    assert before == {p: p.read_bytes() for p in rd.path.rglob("*") if p.is_file()}


def test_resume_of_unreadable_directories(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        runner.resume(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        runner.resume(tmp_path / "empty")
    rd = runner.run(walk(steps=2), out=tmp_path / "r", quiet=True)
    rd.summary_path.write_text("{not json")
    with pytest.raises(UserError, match="not a readable run directory"):
        runner.resume(rd.path)


def test_refuses_to_write_into_a_non_empty_directory(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        runner.run(walk(), out=out, quiet=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_bad_config_writes_nothing(tmp_path):
    with pytest.raises(UserError):
        runner.run(walk(stepz=3), out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_timings_are_kept_out_of_metrics(tmp_path):
    rd = runner.run(walk(steps=2), out=tmp_path / "r", quiet=True)
    assert all("wall" not in json.dumps(m) for m in rd.read_metrics())
    assert "wall_time_s" in rd.read_summary()
