"""`log.tensorboard=true` writes event files whose scalars are exactly the metrics.jsonl values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments import runner

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["train.num_envs=4", "train.rollout_steps=25", "train.total_steps=300", "train.num_minibatches=1", "train.update_epochs=1",
        "eval_every=2", "eval_episodes=4", "checkpoint_every=2"]


def _scalars(directory: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_event_files_equal_metrics_and_leave_metrics_unchanged(tmp_path: Path) -> None:
    with_tb = runner.run("mappo_spread", out=tmp_path / "tb", overrides=[*TINY, "log.tensorboard=true"], quiet=True)
    without = runner.run("mappo_spread", out=tmp_path / "plain", overrides=TINY, quiet=True)
    assert not (without.path / "tensorboard").exists(), "off by default"
    metrics = with_tb.read_metrics()
    # Switching it on changes nothing in metrics.jsonl (the run is deterministic for a seed).
    assert metrics == without.read_metrics()

    event_dir = with_tb.path / "tensorboard" / "MAPPO-seed0"
    assert list(event_dir.glob("events.out.tfevents.*")), "no event file written"
    board = _scalars(event_dir)
    train = [m for m in metrics if m.get("run") == "MAPPO/seed0" and not m.get("eval")]
    evals = [m for m in metrics if m.get("eval")]
    assert [m["update"] for m in train] == [1, 2, 3] and [m["update"] for m in evals] == [2, 3]

    expected: dict[str, dict[int, float]] = {}
    for prefix, rows in (("train", train), ("eval", evals)):
        for m in rows:
            for key, value in m.items():
                if key in ("update", "run", "eval") or not isinstance(value, (int, float)):
                    continue
                # TensorBoard stores scalars as float32: the same number, rounded once.
                expected.setdefault(f"{prefix}/{key}", {})[m["update"]] = float(np.float32(value))
    assert "train/policy_loss" in expected and "eval/return" in expected
    assert board == expected
