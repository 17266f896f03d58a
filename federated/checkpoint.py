"""The server's per-round checkpoint: global model, round number and the rounds so far.

Written atomically after every completed round, plain and secure alike, so a run stopped in
round ``r`` (a crash, too few replies, a kill) leaves the checkpoint of round ``r - 1`` whole.
``resume`` loads it and continues with round ``r``; since every client seeds its training
from (seed, round, partition) and a secure sum is exact up to the fixed quantization, the
continued run reaches the same final model as an uninterrupted one.

The file holds data only: one ``.npz`` (read with ``allow_pickle=False``) whose member
``meta`` is UTF-8 JSON (round, history, array names), whose members ``w0, w1, ...`` are the
model's arrays and ``s0, s1, ...`` the strategy's server-side state (FedAdam's moments,
FedAvgM's momentum). Loading it never runs code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from envs.files import atomic_write_bytes

FILENAME = "fedavg_server.npz"
FORMAT = "agora-fedavg-server-1"


def checkpoint_path(directory: str | Path) -> Path:
    """Where the checkpoint of ``directory`` lives."""
    return Path(directory) / FILENAME


def save_server_checkpoint(directory: str | Path, server_round: int, weights: dict[str, np.ndarray],
                           history: list[dict[str, Any]], state: dict[str, np.ndarray] | None = None) -> Path:
    """Atomically writes the state after ``server_round`` to ``directory``.

    Args:
        directory: Folder (created if missing).
        server_round: The last completed round.
        weights: The global model after that round, ``{name: array}``.
        history: One JSON-serializable record per completed round (and round 0).
        state: The strategy's server-side arrays, ``{name: array}`` (default none).

    Raises:
        TypeError: a history record holds something JSON cannot store.
    """
    path = checkpoint_path(directory)
    names, state = list(weights), dict(state or {})
    meta = {"format": FORMAT, "round": int(server_round), "names": names, "state_names": list(state),
            "history": history}
    text = json.dumps(meta, allow_nan=True)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(text.encode(), dtype=np.uint8),
             **{f"w{i}": np.asarray(weights[name]) for i, name in enumerate(names)},
             **{f"s{i}": np.asarray(value) for i, value in enumerate(state.values())})
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_server_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` (``round``, ``weights``, ``history``, ``state``) or None.

    Raises:
        ValueError: the file exists but is not a checkpoint of this format (naming it).
    """
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"its format is not {FORMAT!r}")
            weights = {name: npz[f"w{i}"] for i, name in enumerate(meta["names"])}
            state = {name: npz[f"s{i}"] for i, name in enumerate(meta.get("state_names", []))}
    except Exception as exc:  # a foreign, torn or pickled file: say which one
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise ValueError(f"server checkpoint {str(path)!r} cannot be read: {reason}") from None
    return {"round": int(meta["round"]), "weights": weights, "history": list(meta["history"]), "state": state}
