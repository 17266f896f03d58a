"""The server's per-round checkpoint: global model, round number and the rounds so far.

Written atomically after every completed round, so a run stopped in round ``r`` (a crash,
too few replies, a kill) leaves the checkpoint of round ``r - 1`` whole. ``resume`` loads it
and continues with round ``r``; since every client seeds its batch order from (seed, round,
partition), the continued run reaches the same final model as an uninterrupted one.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from experiments.rundir import atomic_write_bytes

FILENAME = "fedavg_server.pkl"


def checkpoint_path(directory: str | Path) -> Path:
    """Where the checkpoint of ``directory`` lives."""
    return Path(directory) / FILENAME


def save_server_checkpoint(directory: str | Path, server_round: int, weights: dict[str, np.ndarray],
                           history: list[dict[str, Any]]) -> Path:
    """Atomically writes the state after ``server_round`` to ``directory``.

    Args:
        directory: Folder (created if missing).
        server_round: The last completed round.
        weights: The global model after that round, ``{name: array}``.
        history: One record per completed round (and round 0, the initial model).
    """
    path = checkpoint_path(directory)
    payload = {"round": server_round, "weights": weights, "history": history}
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def load_server_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` (``round``, ``weights``, ``history``) or None."""
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception as exc:  # a foreign or torn file: say which one
        raise ValueError(f"server checkpoint {str(path)!r} cannot be read: {exc}") from None
