"""A killed MAPPO run with `log.tensorboard=true`, resumed, leaves the event files an
uninterrupted run leaves: events written past the checkpoint are purged, not drawn twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CHECKPOINT_EVERY = 3
CONFIG = {
    "kind": "mappo",
    "seed": 3,
    "train": {"num_envs": 4, "rollout_steps": 25, "total_steps": 2000, "update_epochs": 1, "num_minibatches": 1},
    "eval_every": 4,
    "eval_episodes": 4,
    "checkpoint_every": CHECKPOINT_EVERY,
    "log": {"tensorboard": True},
}


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "experiments", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _events(rundir: Path) -> list[tuple[str, int, float]]:
    """Every scalar event as TensorBoard shows it (purges applied), in a stable order."""
    folder = rundir / "tensorboard" / "MAPPO-seed3"
    if not folder.exists():
        return []
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return sorted((tag, e.step, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int, float]]:
    folder = tmp_path_factory.mktemp("tb_full")
    config = folder / "cfg.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    proc = _cli("run", str(config), "--out", str(folder / "run"), "--quiet")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    return _events(folder / "run")


@pytest.mark.parametrize("kill_at", [2, 5], ids=["before-the-first-checkpoint", "past-a-checkpoint"])
def test_resumed_event_files_equal_an_uninterrupted_run(tmp_path: Path, kill_at: int,
                                                        uninterrupted: list[tuple[str, int, float]]) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    killed = tmp_path / "killed"
    proc = _cli("run", str(config), "--out", str(killed), "--quiet")
    try:
        # SIGKILL once events of a step past the last checkpoint are on disk.
        deadline = time.monotonic() + 300
        while not (steps := {s for _, s, _ in _events(killed)}) or max(steps) < kill_at \
                or max(steps) % CHECKPOINT_EVERY == 0:
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no events within 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert max(s for _, s, _ in _events(killed)) % CHECKPOINT_EVERY != 0  # events past the checkpoint

    resumed = _cli("resume", str(killed), "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    after = _events(killed)
    assert len(after) == len(uninterrupted) and after == uninterrupted
