"""examples/secure_quickstart runs with ``flwr run``, offline, with secure aggregation.

Exactly what its README tells a user to type: ``flwr run <app> --stream`` against Flower's
default ``local`` connection, which starts a local SuperLink in simulation mode. The test
gives that SuperLink its own FLWR_HOME and free ports, reads the final accuracy and loss from
the streamed log, then stops the SuperLink (``flwr`` leaves it running on purpose) and checks
that no process it started is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "secure_quickstart"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _started_under(folder: Path) -> list[psutil.Process]:
    """Processes running in ``folder`` (flwr and the SuperLink it starts inherit its cwd), and
    every descendant of those (Ray and the app processes may change directory)."""
    roots = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if Path(proc.cwd()).is_relative_to(folder):
                roots.append(proc)
    family = {p.pid: p for p in roots}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            family.update({c.pid: c for c in root.children(recursive=True)})
    return list(family.values())


def _stop(procs: list[psutil.Process]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=10)
        if not procs:
            return


@pytest.mark.timeout(600)  # flwr run's own limit is 540 s
def test_flwr_run_trains_the_quickstart_with_secure_aggregation(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           # flwr starts flower-superlink and the app processes by name: this venv's first.
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    argv = [str(Path(sys.executable).parent / "flwr"), "run", str(APP), "--stream",
            "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
            "--run-config", "num-server-rounds=2"]
    try:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=540)
    finally:
        leftover = _started_under(work)
        _stop(leftover)  # the local SuperLink, which `flwr run` leaves running on purpose
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    final = re.search(r"final: test_acc=([\d.]+) test_loss=([\d.]+) survivors=(\d+) rounds=2", log)
    assert final is not None, log[-4000:]
    assert float(final.group(1)) > 0.8  # two securely averaged rounds learn the digits (chance: 0.1)
    assert 0 < float(final.group(2)) < 1.0  # far below the loss of a uniform guess, ln 10 = 2.3
    assert int(final.group(3)) == 3
    assert (work / "final_model.pt").exists()
    assert leftover  # flwr left its local SuperLink running: found by its working directory, then stopped
    assert [p.pid for p in leftover if _alive(p)] == []
    assert _started_under(work) == []


def _alive(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False
