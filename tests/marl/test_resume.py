"""A killed run resumed with `python -m experiments resume` writes what an uninterrupted run writes."""

from __future__ import annotations

from pathlib import Path

import yaml
from killed_runs import TINY_MAPPO, cli, kill_when

from experiments.rundir import RunDir

CONFIG = TINY_MAPPO


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path) -> None:
    config = tmp_path / "mappo_tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    full, killed = tmp_path / "full", tmp_path / "killed"

    # The run to interrupt: kill it (SIGKILL, no clean-up) once a mid-run checkpoint exists.
    proc = cli("run", str(config), "--out", str(killed), "--quiet")
    kill_when(proc, lambda: RunDir(killed).checkpoint_path.exists() and _updates(killed) >= 4, "checkpoint")
    interrupted_lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert 0 < _updates(killed) < 20, "the run must have been stopped part-way"

    resumed = cli("resume", str(killed), "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    uninterrupted = cli("run", str(config), "--out", str(full), "--quiet")
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read().decode()[-2000:]

    resumed_metrics = (killed / "metrics.jsonl").read_text()
    assert resumed_metrics == (full / "metrics.jsonl").read_text()
    assert len(resumed_metrics.splitlines()) > len(interrupted_lines)
    assert yaml.safe_load((killed / "summary.json").read_text())["resumed"] == 1


def _updates(rundir: Path) -> int:
    path = rundir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"update"' in line and '"eval"' not in line)
