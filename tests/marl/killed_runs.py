"""Start an `experiments` CLI run and SIGKILL it at a chosen moment (for the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

#: A MAPPO run small enough to kill part-way and resume in seconds (20 updates, checkpoint every 3).
TINY_MAPPO: dict[str, Any] = {
    "kind": "mappo",
    "seed": 3,
    "train": {"num_envs": 4, "rollout_steps": 25, "total_steps": 2000, "update_epochs": 1, "num_minibatches": 1},
    "eval_every": 4,
    "eval_episodes": 4,
    "checkpoint_every": 3,
}


def cli(*args: str) -> subprocess.Popen:
    """``python -m experiments ARGS`` with stderr captured."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "experiments", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300.0) -> None:
    """SIGKILLs ``proc`` (no clean-up) as soon as ``ready()``; fails if it ends first or ``timeout`` passes."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
