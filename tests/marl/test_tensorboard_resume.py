"""A killed MAPPO run with `log.tensorboard=true`, resumed, leaves the event files an
uninterrupted run leaves: events written past the checkpoint are purged, not drawn twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from killed_runs import TINY_MAPPO, cli, kill_when

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CHECKPOINT_EVERY = TINY_MAPPO["checkpoint_every"]
CONFIG = {**TINY_MAPPO, "log": {"tensorboard": True}}


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
    proc = cli("run", str(config), "--out", str(folder / "run"), "--quiet")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    return _events(folder / "run")


@pytest.mark.parametrize("kill_at", [2, 5], ids=["before-the-first-checkpoint", "past-a-checkpoint"])
def test_resumed_event_files_equal_an_uninterrupted_run(tmp_path: Path, kill_at: int,
                                                        uninterrupted: list[tuple[str, int, float]]) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    killed = tmp_path / "killed"
    proc = cli("run", str(config), "--out", str(killed), "--quiet")

    def past_a_checkpoint() -> bool:  # events of a step the last checkpoint does not cover are on disk
        steps = {s for _, s, _ in _events(killed)}
        return bool(steps) and max(steps) >= kill_at and max(steps) % CHECKPOINT_EVERY != 0

    kill_when(proc, past_a_checkpoint, "events")
    assert max(s for _, s, _ in _events(killed)) % CHECKPOINT_EVERY != 0  # events past the checkpoint

    resumed = cli("resume", str(killed), "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    after = _events(killed)
    assert len(after) == len(uninterrupted) and after == uninterrupted
