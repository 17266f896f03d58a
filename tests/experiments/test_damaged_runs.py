"""Run directories tell the truth: damaged ones are refused, signals and kills are recorded.

Each damaged-directory case is checked to leave the directory byte for byte as it was.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import RunDir, UserError, runner
from experiments import checkpoint as ckpt
from experiments.cli import main

WALK_CLI = Path(__file__).with_name("walk_cli.py")


def walk(**overrides):  # noqa: ANN003, ANN201
    return {"kind": "test_walk", **overrides}


def crashed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "crashed", **overrides) -> RunDir:  # noqa: ANN003
    """A run that failed at step 7, after its checkpoint at step 6 (6 metric lines covered)."""
    monkeypatch.setenv("AGORA_TEST_CRASH_AT", "7")
    with pytest.raises(RuntimeError, match="crash injected"):
        runner.run(walk(**overrides), out=tmp_path / name, quiet=True)
    monkeypatch.delenv("AGORA_TEST_CRASH_AT")
    return RunDir(tmp_path / name)


def snapshot(rd: RunDir) -> dict[str, bytes]:
    return {str(p.relative_to(rd.path)): p.read_bytes() for p in sorted(rd.path.rglob("*")) if p.is_file()}


def refused(rd: RunDir, capsys: pytest.CaptureFixture[str], message: str) -> None:
    """`resume` exits 2 with one line holding ``message`` and changes nothing."""
    before = snapshot(rd)
    assert main(["resume", str(rd.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert snapshot(rd) == before, "a refused resume changed the run directory"


# --------------------------------------------------------------------------------------------
# Damaged metrics


def test_metrics_shorter_than_the_checkpoint(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    lines = rd.metrics_path.read_text().splitlines(keepends=True)
    rd.metrics_path.write_text("".join(lines[:4]))
    refused(rd, capsys, "metrics.jsonl has 4 lines but the checkpoint covers 6")


def test_metrics_missing(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    rd.metrics_path.unlink()
    refused(rd, capsys, "metrics.jsonl is missing")


def test_garbage_line_before_the_checkpoint(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    lines = rd.metrics_path.read_text().splitlines(keepends=True)
    lines[2] = "\x00\x00garbage\n"
    rd.metrics_path.write_text("".join(lines))
    refused(rd, capsys, "line 3 is not JSON")


def test_edited_line_before_the_checkpoint(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    lines = rd.metrics_path.read_text().splitlines(keepends=True)
    lines[1] = json.dumps({"step": 1, "x": 123.0}) + "\n"  # valid JSON, not what was logged
    rd.metrics_path.write_text("".join(lines))
    refused(rd, capsys, "differ from those the checkpoint saw")


# --------------------------------------------------------------------------------------------
# Checkpoints of another run


@pytest.mark.parametrize(("other", "message"), [
    ({"seed": 1}, "(seed)"),
    ({"steps": 13}, "another config"),
])
def test_checkpoint_of_another_run(tmp_path, monkeypatch, capsys, other, message):
    rd = crashed_run(tmp_path, monkeypatch)
    foreign = crashed_run(tmp_path, monkeypatch, name="other", **other)
    rd.checkpoint_path.write_bytes(foreign.checkpoint_path.read_bytes())
    refused(rd, capsys, message)


def test_checkpoint_of_another_kind(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    doc = ckpt.loads(rd.checkpoint_path.read_bytes())
    doc["kind"] = "rollout"
    rd.checkpoint_path.write_bytes(ckpt.dumps(doc))
    refused(rd, capsys, "(kind)")


# --------------------------------------------------------------------------------------------
# Checkpoints that are not ours: never loaded, never run


class _RunsCode:
    """Unpickling this touches a file: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_refused_and_never_run(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"state": _RunsCode(marker), "metrics_lines": 0, "timings_lines": 0})

    rd = crashed_run(tmp_path, monkeypatch)
    rd.checkpoint_path.unlink()
    (rd.checkpoints_dir / "latest.pkl").write_bytes(evil)  # the old format's name
    refused(rd, capsys, "is not in Agora's checkpoint format")

    rd2 = crashed_run(tmp_path, monkeypatch, name="second")
    rd2.checkpoint_path.write_bytes(evil)  # a pickle under the new name
    refused(rd2, capsys, "is not an Agora checkpoint")

    buf = io.BytesIO()
    np.savez(buf, __json__=np.array([_RunsCode(marker)], dtype=object))  # an object array needs pickle
    rd2.checkpoint_path.write_bytes(buf.getvalue())
    refused(rd2, capsys, "is not an Agora checkpoint")
    assert not marker.exists(), "loading a checkpoint ran code"


def test_foreign_npz_and_torn_checkpoint_are_refused(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    good = rd.checkpoint_path.read_bytes()
    rd.checkpoint_path.write_bytes(good[: len(good) // 2])
    refused(rd, capsys, "is not an Agora checkpoint")
    buf = io.BytesIO()
    np.savez(buf, weights=np.zeros(3))
    rd.checkpoint_path.write_bytes(buf.getvalue())
    refused(rd, capsys, "no __json__ member")


# --------------------------------------------------------------------------------------------
# The checkpoint format round-trips what the kinds save


def test_checkpoint_format_round_trips_kind_states():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    rng = np.random.default_rng(7)
    rng.normal(size=3)
    state = {
        "numpy_rng": rng.bit_generator.state,  # 128-bit integers
        "torch_rng": torch.Generator().manual_seed(3).get_state(),
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        0.5: {"loads": np.arange(12.0).reshape(3, 4), "mses": np.float32(0.25)},  # float keys (moe)
        2: [{"x": float("nan"), "y": float("-inf")}, (1, "a", None, True)],  # int keys (ring)
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "curve": [(0.0, 1.0), (0.5, 0.25)],
        "done": {"b", "a"},
        "__tricky": "a key that looks like a marker",
    }
    back = ckpt.loads(ckpt.dumps(state))
    assert back.keys() == state.keys()
    assert back["numpy_rng"] == state["numpy_rng"]
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    opt2 = torch.optim.Adam(model.parameters(), lr=0.01)
    opt2.load_state_dict(back["optimizer"])  # torch accepts it as its own
    assert all(torch.equal(opt2.state_dict()["state"][i]["exp_avg"], s["exp_avg"]) for i, s in opt.state_dict()["state"].items())
    assert np.array_equal(back[0.5]["loads"], state[0.5]["loads"]) and back[0.5]["mses"].dtype == np.float32
    assert np.isnan(back[2][0]["x"]) and back[2][0]["y"] == float("-inf") and back[2][1] == (1, "a", None, True)
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])
    assert back["curve"] == state["curve"] and back["done"] == {"a", "b"} and back["__tricky"] == state["__tricky"]


def test_checkpoint_of_an_object_is_refused_with_its_path():
    from dataclasses import dataclass

    @dataclass
    class Result:
        loss: float

    with pytest.raises(ckpt.CheckpointFormatError, match=r"at 'runs\[1\]\.best'"):
        ckpt.dumps({"runs": [1, {"best": Result(0.1)}]})


# --------------------------------------------------------------------------------------------
# NaN headline, lock, kill -9, SIGTERM


def test_nan_headline_is_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGORA_TEST_NAN_HEADLINE", "1")
    assert main(["run", str(_walk_yaml(tmp_path)), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("failed:") and "spread.last" in err[0], err
    s = RunDir(tmp_path / "r").read_summary()
    assert s["status"] == "failed" and "not a finite number" in s["error"] and s["headline"] == {}


def _walk_yaml(tmp_path: Path, **fields) -> Path:  # noqa: ANN003
    import yaml

    path = tmp_path / "walk.yaml"
    path.write_text(yaml.safe_dump({"kind": "test_walk", **fields}))
    return path


def test_live_lock_refuses_and_stale_lock_is_broken(tmp_path, monkeypatch, capsys):
    rd = crashed_run(tmp_path, monkeypatch)
    from experiments.rundir import _start_time

    parent = os.getppid()  # alive for the whole test
    rd.lock_path.write_text(json.dumps({"pid": parent, "host": os.uname().nodename, "pid_start": _start_time(parent)}))
    refused(rd, capsys, f"in use by process {parent}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rd.lock_path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert main(["resume", str(rd.path), "--quiet"]) == 0
    assert rd.read_summary()["status"] == "complete" and not rd.lock_path.exists()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.Popen([sys.executable, str(WALK_CLI), *args], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _stop(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _wait_for_checkpoint(rd: RunDir, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not rd.checkpoint_path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def test_two_resumes_at_once_exactly_one_runs(tmp_path, monkeypatch):
    full = runner.run(walk(), out=tmp_path / "full", quiet=True)
    rd = crashed_run(tmp_path, monkeypatch)
    slow = {"AGORA_TEST_STEP_SECONDS": "0.3"}  # 6 steps left: about 2 s of work
    a = _cli("resume", str(rd.path), "--quiet", env=slow)
    b = _cli("resume", str(rd.path), "--quiet", env=slow)
    try:
        outs = [p.communicate(timeout=120) for p in (a, b)]
    finally:
        _stop(a, b)
    codes = sorted(p.returncode for p in (a, b))
    assert codes == [0, 2], outs
    loser = outs[[a.returncode, b.returncode].index(2)][1]
    assert "in use by process" in loser or "still running" in loser or "already finished" in loser, loser
    assert rd.read_summary()["status"] == "complete" and rd.read_summary()["resumed"] == 1
    assert rd.metrics_path.read_bytes() == full.metrics_path.read_bytes(), "duplicate or missing metric lines"


def test_sigterm_marks_interrupted_exit_143_then_resume_completes(tmp_path):
    full = runner.run(walk(), out=tmp_path / "full", quiet=True)
    cfg = _walk_yaml(tmp_path)
    out = tmp_path / "r"
    proc = _cli("run", str(cfg), "--out", str(out), "--quiet", env={"AGORA_TEST_STEP_SECONDS": "0.2"})
    try:
        _wait_for_checkpoint(RunDir(out), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "SIGTERM" in lines[0], err
    s = RunDir(out).read_summary()
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"] and not RunDir(out).lock_path.exists()
    p = _cli("resume", str(out), "--quiet")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert RunDir(out).metrics_path.read_bytes() == full.metrics_path.read_bytes()


def test_kill_9_reads_as_interrupted_everywhere(tmp_path, capsys):
    cfg = _walk_yaml(tmp_path)
    out = tmp_path / "r"
    proc = _cli("run", str(cfg), "--out", str(out), "--quiet", env={"AGORA_TEST_STEP_SECONDS": "0.2"})
    try:
        _wait_for_checkpoint(RunDir(out), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _stop(proc)
    raw = json.loads((out / "summary.json").read_text())
    assert raw["status"] == "running"  # what the killed process left
    assert main(["gallery", str(out), "--out", str(tmp_path / "g.html")]) == 0
    page = (tmp_path / "g.html").read_text()
    assert "class='status-interrupted'>interrupted<" in page and ">running<" not in page
    assert RunDir(out).read_summary()["status"] == "interrupted"
    capsys.readouterr()
    assert main(["resume", str(out), "--quiet"]) == 0  # the dead process's lock is stale
    assert RunDir(out).read_summary()["status"] == "complete"


# --------------------------------------------------------------------------------------------
# The gallery escapes what it did not write


def test_gallery_escapes_every_summary_field(tmp_path):
    rd = runner.run(walk(steps=2), out=tmp_path / "r", quiet=True)
    s = rd.read_summary()
    evil = "<script>alert(1)</script>"
    s.update(axis=evil, seed=evil, wall_time_s=evil, status="complete", name=evil, kind=evil, description=evil,
             error=evil, headline={evil: evil, "x": 1.5})
    rd.write_summary(s)
    (rd.figures_dir / f"{evil.replace('/', '')}.png").write_bytes(b"not really a png")
    page = (tmp_path / "g.html")
    assert main(["gallery", str(rd.path), "--out", str(page)]) == 0
    text = page.read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text


def test_resume_refusal_does_not_hide_a_finished_run(tmp_path):
    rd = runner.run(walk(steps=3), out=tmp_path / "r", quiet=True)
    with pytest.raises(UserError, match="already finished"):
        runner.resume(rd.path)
    assert not rd.lock_path.exists()
