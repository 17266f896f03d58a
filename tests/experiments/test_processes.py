"""The processes a run starts never outlive it: SIGTERM and SIGKILL to deploy, a simulation run, launch.

Leftovers are found by parent pid chain, process group and start time, never by name: before
the signal, every descendant of the process under test is recorded (pid and start time); after
it, none of them may still run, and no process may remain in a group one of them leads. Each
test stops whatever it finds left, also when it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from federated.reaper import descendants, process_table, stop_processes

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    # A session of its own: its group is the test's handle on it, and a signal to the test's
    # group never reaches it.
    return subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _wait(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"ended before {what}: exit {proc.returncode}\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.1)


def _left(recorded: dict[int, int], root: int) -> list[str]:
    """Recorded processes still running, and members of their groups or of ``root``'s group."""
    table = process_table()
    groups = {root} | {pid for pid in recorded if pid in {g for _, g, _ in table.values()}}
    left = {pid for pid, start in recorded.items() if pid in table and table[pid][2] == start}
    left |= {pid for pid, (_, g, _) in table.items() if g in groups}
    return [f"{pid}: {_cmdline(pid)}" for pid in sorted(left)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def _signal_and_check(proc: subprocess.Popen[bytes], sig: int, within: float) -> tuple[dict[int, int], list[str]]:
    """Records ``proc``'s descendants, sends ``sig`` to ``proc`` alone, waits; returns what is left."""
    recorded = descendants(proc.pid)
    assert recorded, "the process under test has started nothing yet"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    deadline = time.monotonic() + within
    left = _left(recorded, proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _left(recorded, proc.pid)
    return recorded, left


def _cleanup(proc: subprocess.Popen[bytes], recorded: dict[int, int]) -> None:
    if proc.poll() is None:
        recorded.update(descendants(proc.pid))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stop_processes(dict(recorded), grace_s=1.0)


# --------------------------------------------------------------------------------------------
# capabilities.training.launch


LAUNCHER = textwrap.dedent('''
    import time
    import torch
    import torch.distributed as dist
    from capabilities.training.launch import launch

    def spin(rank, world):
        t = torch.ones(1000)
        while True:  # all-reduces forever: only the caller's death can end it
            dist.all_reduce(t)
            time.sleep(0.01)

    if __name__ == "__main__":
        launch(spin, 3, timeout_s=600)
''')


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_launch_workers_stop_when_the_caller_is_killed(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    proc = _start([sys.executable, str(script)], tmp_path)
    recorded: dict[int, int] = {}
    try:
        # The fork server and three workers (and multiprocessing's resource tracker).
        _wait(lambda: len(descendants(proc.pid)) >= 4, proc, "three workers", 120)
        time.sleep(1.0)  # let them get into their all-reduces
        recorded, left = _signal_and_check(proc, sig, within=10.0)
        assert not left, f"still running 10 s after the caller got {signal.Signals(sig).name}:\n" + "\n".join(left)
    finally:
        _cleanup(proc, recorded)


# --------------------------------------------------------------------------------------------
# Flower's deployment engine: python -m federated.deploy and its secure twin


def _checkpoint_exists(folder: Path) -> Callable[[], bool]:
    return lambda: any(folder.rglob("fedavg_server.*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("module", ["federated.deploy", "federated.secure_deploy"])
def test_deploy_leaves_no_process(tmp_path: Path, module: str, sig: int) -> None:
    work = tmp_path / "work"
    out_flag = "--out" if module == "federated.deploy" else "--workdir"
    proc = _start([sys.executable, "-m", module, "--supernodes", "2", "--rounds", "200", out_flag, str(work)], tmp_path)
    recorded: dict[int, int] = {}
    try:
        # A round done: SuperLink, SuperNodes, SuperExec, ServerApp and ClientApps all run.
        _wait(_checkpoint_exists(work), proc, "first round", 300)
        recorded, left = _signal_and_check(proc, sig, within=20.0)
        assert not left, f"left after {signal.Signals(sig).name} to {module}:\n" + "\n".join(left)
        if sig == signal.SIGTERM:
            err = proc.stderr.read().decode()
            assert proc.returncode == 143 and "Traceback" not in err, err
            assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    finally:
        _cleanup(proc, recorded)


# --------------------------------------------------------------------------------------------
# A FedAvg run on the simulation engine (Ray), through the experiments CLI


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_simulation_run_leaves_no_ray_process(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    proc = _start([sys.executable, "-m", "experiments", "run", "fedavg_digits", "--out", str(out), "--quiet",
                   "num_clients=2", "rounds=200", "centralized_reference=false",
                   "partitionings=[{partitioner: iid}]"], tmp_path)
    recorded: dict[int, int] = {}
    try:
        # Round 1 done (round 0 is evaluated before Ray starts): Ray's head and actors run.
        _wait(lambda: " round 1:" in (out / "log.txt").read_text() if (out / "log.txt").exists() else False,
              proc, "first round", 300)
        recorded, left = _signal_and_check(proc, sig, within=20.0)
        assert not left, f"left after {signal.Signals(sig).name}:\n" + "\n".join(left)
        if sig == signal.SIGTERM:
            err = proc.stderr.read().decode()
            assert proc.returncode == 143, err
            # What the signal causes is one line, and nothing else reaches the console: Flower's
            # engine logs a busy ClientApp actor's death (with a traceback) as Ray tears down,
            # into the run's log.txt.
            assert "Traceback" not in err and "SIGTERM received" not in err, err
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM"), err
        from experiments import RunDir

        assert RunDir(out).read_summary()["status"] == "interrupted"
    finally:
        _cleanup(proc, recorded)


@pytest.mark.slow
def test_a_supernode_that_dies_mid_run_does_not_stop_later_rounds(tmp_path: Path) -> None:
    import threading

    from federated.checkpoint import load_server_checkpoint
    from federated.deploy import LocalFederation
    from federated.settings import FedSettings

    ckdir = tmp_path / "checkpoints"
    # Round 2 waits for the dead node until the SuperLink notices it is gone (missed heartbeats)
    # or round_timeout passes; round 3 no longer samples it.
    settings = FedSettings(num_partitions=3, num_server_rounds=3, partitioner="iid", fraction_evaluate=0.0,
                           min_replies=2, round_timeout=120.0, checkpoint_dir=str(ckdir))
    done: list[int] = []
    with LocalFederation(3, tmp_path / "work") as fed:
        runner = threading.Thread(target=lambda: done.append(fed.submit(settings.to_run_config(), 400).returncode))
        runner.start()
        try:
            deadline = time.monotonic() + 300
            while (state := load_server_checkpoint(ckdir)) is None or state["round"] < 1:
                assert runner.is_alive() and time.monotonic() < deadline, fed.tail("flwr-run")
                time.sleep(0.2)
            # procs: the SuperLink, then SuperNodes 0, 1, 2. SuperNode 2 and its ClientApps go.
            victim = fed.procs[3]
            os.killpg(victim.pid, signal.SIGKILL)
        finally:
            runner.join(timeout=420)
        assert done == [0], fed.tail("flwr-run", 4000)
    history = load_server_checkpoint(ckdir)["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3]
    assert history[1]["replies"] == 3
    assert [h["replies"] for h in history[2:]] == [2, 2], history  # the two nodes left carry on
