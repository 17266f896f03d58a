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
A checkpoint records how many metric lines existed when it was taken (and their SHA-256);
resuming checks those lines are still there, unchanged, then truncates the logs back to that
point, so a resumed run writes the same lines as an uninterrupted one. Checkpoints hold data,
never pickled objects (:mod:`experiments.checkpoint`).

``DIR/.lock`` holds the pid of the one process working in the directory; it is created with
``O_CREAT | O_EXCL``, so of two processes only one gets it. A lock or a ``running`` summary whose
process is gone (kill -9, power loss) is recognised as such: the run reads as ``interrupted``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envs.files import atomic_write_bytes
from experiments import checkpoint as _ckpt
from experiments.errors import UserError

STATUSES = ("running", "complete", "failed", "interrupted")


def pseudo_filesystem(path: str | Path) -> str | None:
    """``/proc``, ``/sys`` or ``/dev`` when ``path`` lies under one (``/dev/shm`` is real), else None."""
    parts = Path(path).resolve().parts
    if len(parts) > 1 and parts[1] in ("proc", "sys", "dev") and parts[1:3] != ("dev", "shm"):
        return f"/{parts[1]}"
    return None


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
    checkpoint_path = property(lambda self: self.path / "checkpoints" / "latest.npz")
    lock_path = property(lambda self: self.path / ".lock")

    @staticmethod
    def is_run(path: str | Path) -> bool:
        p = Path(path)
        return (p / "summary.json").is_file() and (p / "config.yaml").is_file()

    def check_new(self) -> None:
        """Refuses, before anything is written, a path a new run cannot be created at.

        Raises:
            UserError: when the path is a file or device, lies under /proc, /sys or /dev,
                is a non-empty directory, or cannot be created or written.
        """
        where = f"output directory (--out) {str(self.path)!r}"
        special = pseudo_filesystem(self.path)
        if special:
            raise UserError(f"{where} is under {special}, which holds no files; choose a folder on disk")
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_dir():
                raise UserError(f"{where} exists and is not a directory; choose a new folder")
            try:
                busy = any(self.path.iterdir())
            except OSError as exc:
                raise UserError(f"{where} cannot be read: {exc.strerror}") from None
            if busy:
                raise UserError(f"{where} exists and is not empty; choose another --out")
            target = self.path
        else:
            target = self.path.parent
            while not target.exists() and target != target.parent:
                target = target.parent
            if not target.is_dir():
                raise UserError(f"{where} cannot be created: {str(target)!r} is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise UserError(f"{where} cannot be created: {str(target)!r} is not writable")

    def create(self, resolved: dict[str, Any]) -> None:
        """Creates the folder for a new run and takes its lock; refuses a non-empty one."""
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.acquire_lock()
            self.figures_dir.mkdir(exist_ok=True)
            self.checkpoints_dir.mkdir(exist_ok=True)
            atomic_write_text(self.config_path, yaml.safe_dump(resolved, sort_keys=False))
        except OSError as exc:
            raise UserError(f"cannot create run directory {str(self.path)!r}: {exc.strerror or exc}") from None

    # The lock --------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Takes ``DIR/.lock`` for this process, breaking a lock whose process is gone.

        Raises:
            UserError: when a live process holds it.
        """
        me = _process_tag()
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_tag(self.lock_path)
                if holder is not None and holder != me and _tag_alive(holder):
                    raise UserError(f"run {str(self.path)!r} is in use by process {holder.get('pid')} on "
                                    f"{holder.get('host')} (lock {str(self.lock_path)!r}); wait for it or stop it") from None
                # Stale: move it aside atomically. Of two processes breaking it, one rename wins;
                # a loser that moved a fresh lock of the winner puts it back and gives up.
                aside = self.lock_path.with_name(f".lock.stale.{os.getpid()}")
                try:
                    os.rename(self.lock_path, aside)
                except FileNotFoundError:
                    continue
                moved = _read_tag(aside)
                if moved is not None and moved != me and _tag_alive(moved):
                    with contextlib.suppress(OSError):
                        os.rename(aside, self.lock_path)
                    raise UserError(f"run {str(self.path)!r} is in use by process {moved.get('pid')} "
                                    f"(lock {str(self.lock_path)!r})") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(aside)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me) + "\n")
            return
        raise UserError(f"could not take the lock {str(self.lock_path)!r} (other processes keep taking it)")

    def release_lock(self) -> None:
        """Removes ``DIR/.lock`` if this process holds it."""
        if _read_tag(self.lock_path) == _process_tag():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)

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
        if data["status"] == "running" and not _tag_alive(data):
            # Its process died without a word (kill -9, power loss): say so, and write it down.
            data["status"] = "interrupted"
            data["error"] = f"process {data.get('pid')} on {data.get('host')} ended without finishing (killed)"
            data.pop("pid", None)
            with contextlib.suppress(OSError):
                self.write_summary(data)
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
        config: The resolved config (``kind`` included); a checkpoint records its digest, so
            `resume` refuses a checkpoint of another config. Default: read from config.yaml.
    """

    def __init__(self, rundir: RunDir, seed: int, *, quiet: bool = False, resume_state: Any = None,
                 config: dict[str, Any] | None = None) -> None:
        self.dir = rundir
        self.path = rundir.path
        self.seed = seed
        self.quiet = quiet
        self.resume_state = resume_state
        self._config = config if config is not None else (rundir.read_config() if rundir.config_path.exists() else {})
        # The digest of metrics.jsonl so far, kept up to date line by line: a checkpoint
        # records it without rereading the file.
        self._metrics_hash = hashlib.sha256()
        self._metrics_lines = 0
        for line in _complete_lines(rundir.metrics_path):
            self._metrics_hash.update(line)
            self._metrics_lines += 1
        self._timings_lines = _count_lines(rundir.timings_path)
        self.logger = _make_logger(rundir, quiet)

    @property
    def rng(self) -> np.random.Generator:
        """A fresh numpy generator seeded with the run's seed."""
        return np.random.default_rng(self.seed)

    # Logs -------------------------------------------------------------------------------
    def log(self, **values: Any) -> None:
        """Appends one JSON object to metrics.jsonl. Only deterministic values belong here."""
        line = _append_line(self.dir.metrics_path, values)
        self._metrics_hash.update(line)
        self._metrics_lines += 1

    def log_timing(self, **values: Any) -> None:
        """Appends one JSON object of wall-clock measurements to timings.jsonl."""
        _append_line(self.dir.timings_path, values)
        self._timings_lines += 1

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
        """Saves ``state`` atomically as data (see :mod:`experiments.checkpoint`).

        ``state`` holds plain data: dicts, lists, tuples, numbers, strings, numpy arrays and
        torch tensors (a ``state_dict()``, an RNG's state). The checkpoint also records the
        run's kind, seed and config digest and how many metric and timing lines exist (with
        the metric lines' digest), so `resume` can check the directory and drop later lines.

        Raises:
            TypeError: when ``state`` holds something that is not plain data.
        """
        document = {
            "kind": self._config.get("kind"),
            "seed": self.seed,
            "config_sha256": config_digest(self._config),
            "metrics_lines": self._metrics_lines,
            "metrics_sha256": self._metrics_hash.hexdigest(),
            "timings_lines": self._timings_lines,
            "saved": _now(),
            "state": state,
        }
        try:
            data = _ckpt.dumps(document)
        except _ckpt.CheckpointFormatError as exc:
            raise TypeError(str(exc)) from None
        atomic_write_bytes(self.dir.checkpoint_path, data)


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a resolved config in a canonical JSON form."""
    return hashlib.sha256(json.dumps(to_jsonable(config), sort_keys=True).encode()).hexdigest()


def load_checkpoint(rundir: RunDir, config: dict[str, Any] | None = None) -> Any:
    """The state of ``rundir``'s last checkpoint (logs truncated to it), or None if none.

    Before anything is changed, the checkpoint must be in this project's format and belong to
    this run (same kind, seed and config), and metrics.jsonl must still hold, unchanged, every
    line the checkpoint counted.

    Raises:
        UserError: naming what does not match; the directory is left as it was.
    """
    config = rundir.read_config() if config is None else config
    where = f"cannot resume {str(rundir.path)!r}:"
    foreign = sorted(p.name for p in rundir.checkpoints_dir.glob("latest.*") if p.name != rundir.checkpoint_path.name) \
        if rundir.checkpoints_dir.is_dir() else []
    if not rundir.checkpoint_path.exists():
        if foreign:
            raise UserError(f"{where} checkpoint {foreign[0]!r} is not in Agora's checkpoint format "
                            f"(expected {rundir.checkpoint_path.name}); it is not loaded")
        _truncate_lines(rundir.metrics_path, 0)
        _truncate_lines(rundir.timings_path, 0)
        return None
    try:
        payload = _ckpt.loads(rundir.checkpoint_path.read_bytes())
    except (OSError, _ckpt.CheckpointFormatError) as exc:
        raise UserError(f"{where} checkpoint {str(rundir.checkpoint_path)!r} is not an Agora checkpoint ({exc}); "
                        "it is not loaded") from None
    for key, want in (("kind", config.get("kind")), ("seed", config.get("seed")),
                      ("config_sha256", config_digest(config))):
        if payload.get(key) != want:
            what = "config" if key == "config_sha256" else key
            got = "another config" if key == "config_sha256" else repr(payload.get(key))
            raise UserError(f"{where} the checkpoint belongs to {got} ({what}), not this run's {what}"
                            + ("" if key == "config_sha256" else f" {want!r}"))
    lines = payload.get("metrics_lines")
    if not isinstance(lines, int) or lines < 0 or not isinstance(payload.get("timings_lines"), int):
        raise UserError(f"{where} the checkpoint does not say how many metric lines it covers")
    if lines and not rundir.metrics_path.exists():
        raise UserError(f"{where} metrics.jsonl is missing but the checkpoint covers {lines} lines of it")
    digest = hashlib.sha256()
    have = 0
    for line in _complete_lines(rundir.metrics_path):
        if have == lines:
            break
        try:
            json.loads(line)
        except ValueError:
            raise UserError(f"{where} metrics.jsonl line {have + 1} is not JSON (a damaged file)") from None
        digest.update(line)
        have += 1
    if have < lines:
        raise UserError(f"{where} metrics.jsonl has {have} lines but the checkpoint covers {lines}")
    if digest.hexdigest() != payload.get("metrics_sha256"):
        raise UserError(f"{where} the first {lines} lines of metrics.jsonl differ from those the checkpoint saw")
    _truncate_lines(rundir.metrics_path, lines)
    _truncate_lines(rundir.timings_path, payload["timings_lines"])
    return payload["state"]


def _append_line(path: Path, values: dict[str, Any]) -> bytes:
    line = (json.dumps(to_jsonable(values), sort_keys=False) + "\n").encode()
    with path.open("ab") as fh:
        fh.write(line)
    return line


def _complete_lines(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                yield line


# Which process is this: pid, host and the pid's start time (a reused pid has another one).


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5), counted after the command name
    except (OSError, IndexError, ValueError):
        return None


def _process_tag() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _start_time(os.getpid())}


def _read_tag(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tag_alive(tag: dict[str, Any]) -> bool:
    """Whether the process a lock or summary names still runs (unknown hosts count as alive)."""
    pid = tag.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if tag.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: we cannot tell, so we do not call it dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = tag.get("pid_start")
    return start is None or _start_time(pid) in (None, start)


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
