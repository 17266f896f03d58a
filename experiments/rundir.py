"""The run directory and the context an experiment kind runs in.

::

    DIR/config.yaml      the resolved config (kind included)
    DIR/metrics.jsonl    one JSON object per step / round / iteration (deterministic values only)
    DIR/timings.jsonl    wall-clock measurements, kept apart so metrics repeat exactly
    DIR/summary.json     status (running | complete | failed | interrupted) and headline numbers
    DIR/figures/         the run's pictures
    DIR/checkpoints/     what `resume` continues from
    DIR/log.txt

Every file but the two append-only logs is written atomically (temporary file, then rename).
A checkpoint records how many metric lines existed when it was taken; resuming truncates the
logs back to that point, so a resumed run writes the same lines as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments.errors import UserError

STATUSES = ("running", "complete", "failed", "interrupted")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renamed onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def to_jsonable(value: Any) -> Any:
    """Numpy and torch scalars/arrays to plain Python; NaN and inf to None-free strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n"))


def _truncate_lines(path: Path, keep: int) -> None:
    """Keeps the first ``keep`` complete lines of ``path`` (drops a torn last line too)."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        lines = [line for line in fh if line.endswith(b"\n")][:keep]
    atomic_write_bytes(path, b"".join(lines))


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # Paths
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    timings_path = property(lambda self: self.path / "timings.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    figures_dir = property(lambda self: self.path / "figures")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    log_path = property(lambda self: self.path / "log.txt")
    checkpoint_path = property(lambda self: self.path / "checkpoints" / "latest.pkl")

    @staticmethod
    def is_run(path: str | Path) -> bool:
        p = Path(path)
        return (p / "summary.json").is_file() and (p / "config.yaml").is_file()

    def create(self, resolved: dict[str, Any]) -> None:
        """Creates the folder for a new run; refuses to write into a non-empty one."""
        if self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"output directory {str(self.path)!r} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.figures_dir.mkdir(exist_ok=True)
        self.checkpoints_dir.mkdir(exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(resolved, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{str(self.path)!r} is not a readable run directory (config.yaml: {exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(self.path)!r} is not a readable run directory (config.yaml is not a mapping)")
        return data

    def read_summary(self) -> dict[str, Any]:
        try:
            data = json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{str(self.path)!r} is not a readable run directory (summary.json: {exc})") from None
        if not isinstance(data, dict) or data.get("status") not in STATUSES:
            raise UserError(f"{str(self.path)!r} is not a readable run directory (summary.json has no valid status)")
        return data

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(to_jsonable(summary), indent=2, sort_keys=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def figures(self) -> list[Path]:
        if not self.figures_dir.is_dir():
            return []
        return sorted(p for p in self.figures_dir.iterdir() if p.suffix in (".png", ".gif", ".svg") and not p.name.startswith("."))


class RunContext:
    """What an experiment kind gets besides its config: seed, logs, figures, checkpoints.

    Args:
        rundir: The run directory.
        seed: The run's seed (also in the config).
        quiet: No progress bars or console logging.
        resume_state: The last checkpoint's state when resuming, else None.
    """

    def __init__(self, rundir: RunDir, seed: int, *, quiet: bool = False, resume_state: Any = None) -> None:
        self.dir = rundir
        self.path = rundir.path
        self.seed = seed
        self.quiet = quiet
        self.resume_state = resume_state
        self.logger = _make_logger(rundir, quiet)

    @property
    def rng(self) -> np.random.Generator:
        """A fresh numpy generator seeded with the run's seed."""
        return np.random.default_rng(self.seed)

    # Logs -------------------------------------------------------------------------------
    def log(self, **values: Any) -> None:
        """Appends one JSON object to metrics.jsonl. Only deterministic values belong here."""
        _append_line(self.dir.metrics_path, values)

    def log_timing(self, **values: Any) -> None:
        """Appends one JSON object of wall-clock measurements to timings.jsonl."""
        _append_line(self.dir.timings_path, values)

    def info(self, message: str) -> None:
        """One line to log.txt (and the console unless quiet)."""
        self.logger.info(message)

    # Pictures and files -----------------------------------------------------------------
    def save_figure(self, fig: Any, name: str, *, dpi: int = 110) -> Path:
        """Saves a matplotlib figure as figures/NAME.png atomically and closes it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        path = self.dir.figures_dir / f"{name}.png"
        atomic_write_bytes(path, buf.getvalue())
        return path

    def artifact(self, relpath: str) -> contextlib.AbstractContextManager[Path]:
        """A temporary path to write ``relpath`` (e.g. 'figures/flock.gif'); renamed on success."""
        return atomic_path(self.path / relpath)

    # Progress ---------------------------------------------------------------------------
    def progress(self, iterable: Iterable[Any], *, total: int | None = None, description: str = "") -> Iterator[Any]:
        """Iterates with a progress bar (none when quiet)."""
        from experiments.progress import track

        return track(iterable, total=total, description=description, quiet=self.quiet)

    # Checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, state: Any) -> None:
        """Saves ``state`` (anything picklable: tensors, arrays, RNG states) atomically.

        The checkpoint remembers how many metric and timing lines exist, so `resume` can drop
        lines written after it.
        """
        payload = {
            "state": state,
            "metrics_lines": _count_lines(self.dir.metrics_path),
            "timings_lines": _count_lines(self.dir.timings_path),
            "saved": _now(),
        }
        atomic_write_bytes(self.dir.checkpoint_path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(rundir: RunDir) -> Any:
    """The state of ``rundir``'s last checkpoint (logs truncated to it), or None if none."""
    if not rundir.checkpoint_path.exists():
        _truncate_lines(rundir.metrics_path, 0)
        _truncate_lines(rundir.timings_path, 0)
        return None
    try:
        payload = pickle.loads(rundir.checkpoint_path.read_bytes())
    except Exception as exc:  # a torn or foreign file
        raise UserError(f"checkpoint {str(rundir.checkpoint_path)!r} cannot be read: {exc}") from None
    _truncate_lines(rundir.metrics_path, payload["metrics_lines"])
    _truncate_lines(rundir.timings_path, payload["timings_lines"])
    return payload["state"]


def _append_line(path: Path, values: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(to_jsonable(values), sort_keys=False) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _make_logger(rundir: RunDir, quiet: bool) -> logging.Logger:
    logger = logging.getLogger(f"agora.run.{rundir.path.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fh = logging.FileHandler(rundir.log_path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(fh)
    if not quiet:
        from rich.logging import RichHandler

        from experiments.progress import console

        logger.addHandler(RichHandler(console=console(), show_path=False, show_level=False))
    return logger
