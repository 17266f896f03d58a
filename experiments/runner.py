"""Runs an experiment config into a run directory, and resumes one that did not finish."""

from __future__ import annotations

import datetime as _dt
import os
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from experiments.config import apply_overrides, read_yaml, resolve_config_path, to_plain, validate
from experiments.errors import UserError
from experiments.kinds import KindSpec, get_kind
from experiments.rundir import RunContext, RunDir, load_checkpoint


def prepare(
    config: str | Path | dict[str, Any],
    *,
    overrides: list[str] = (),  # type: ignore[assignment]
    seed: int | None = None,
) -> tuple[KindSpec, Any, str]:
    """Reads, overrides and validates a config before anything is written.

    Returns:
        The kind, the validated config and the config's name (file stem).
    """
    if isinstance(config, dict):
        data, name = dict(config), str(config.get("kind", "config"))
    else:
        path = resolve_config_path(config)
        data, name = read_yaml(path), path.stem
    data = apply_overrides(data, list(overrides))
    if seed is not None:
        data["seed"] = seed
    spec = get_kind(data.pop("kind", None))
    cfg = validate(spec.config, data, spec.name)
    return spec, cfg, name


def default_out(name: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(root) / f"{name}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(root) / f"{name}-{stamp}-{n}"
    return out


def run(
    config: str | Path | dict[str, Any],
    *,
    out: str | Path | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    seed: int | None = None,
    quiet: bool = False,
) -> RunDir:
    """Runs ``config`` into ``out`` (default ``runs/NAME-TIMESTAMP``) and returns the run directory.

    Raises:
        UserError: for a bad config or output directory, before anything is written.
        Exception: whatever the experiment raised; the run is then marked ``failed``.
    """
    spec, cfg, name = prepare(config, overrides=overrides, seed=seed)
    rundir = RunDir(out if out is not None else default_out(name))
    rundir.create({"kind": spec.name, **to_plain(cfg)})
    return _execute(rundir, spec, cfg, name, resume_state=None, quiet=quiet)


def resume(path: str | Path, *, quiet: bool = False) -> RunDir:
    """Continues the run in ``path`` from its last checkpoint."""
    rundir = RunDir(path)
    if not Path(path).is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if not RunDir.is_run(path):
        raise UserError(f"{str(path)!r} is not a run directory (it needs config.yaml and summary.json)")
    summary = rundir.read_summary()
    status = summary["status"]
    if status == "complete":
        raise UserError(f"run {str(path)!r} already finished (status complete); start a new one with `run`")
    if status == "running" and _alive(summary):
        raise UserError(f"run {str(path)!r} is still running (pid {summary.get('pid')}); stop it before resuming")
    data = rundir.read_config()
    spec = get_kind(data.pop("kind", None))
    cfg = validate(spec.config, data, spec.name)
    state = load_checkpoint(rundir)
    return _execute(rundir, spec, cfg, summary.get("name", spec.name), resume_state=state, quiet=quiet,
                    previous=summary)


def _alive(summary: dict[str, Any]) -> bool:
    pid = summary.get("pid")
    if not isinstance(pid, int) or summary.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(f"terminated by signal {signum}")


def _execute(
    rundir: RunDir,
    spec: KindSpec,
    cfg: Any,
    name: str,
    *,
    resume_state: Any,
    quiet: bool,
    previous: dict[str, Any] | None = None,
) -> RunDir:
    summary: dict[str, Any] = {
        "name": name,
        "kind": spec.name,
        "axis": spec.axis,
        "description": cfg.description or spec.description,
        "seed": cfg.seed,
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": (previous or {}).get("started") or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "resumed": (previous or {}).get("resumed", 0) + (1 if previous else 0),
        "headline": {},
    }
    rundir.write_summary(summary)
    ctx = RunContext(rundir, cfg.seed, quiet=quiet, resume_state=resume_state)
    ctx.info(f"{'resuming' if previous else 'starting'} {spec.name} ({name}) in {rundir.path}")
    old = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    t0 = time.perf_counter()
    try:
        headline = spec.run(cfg, ctx) or {}
    except (KeyboardInterrupt, _Terminated, SystemExit) as exc:  # Flower turns SIGTERM into SystemExit
        summary.update(status="interrupted", error=str(exc) or "interrupted")
        raise
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        ctx.info("".join(traceback.format_exception(exc)))
        raise
    else:
        summary.update(status="complete", headline=headline)
    finally:
        summary.update(
            finished=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            wall_time_s=round(time.perf_counter() - t0 + (previous or {}).get("wall_time_s", 0.0), 3),
            figures=[str(p.relative_to(rundir.path)) for p in rundir.figures()],
        )
        summary.pop("pid", None)
        rundir.write_summary(summary)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        for h in list(ctx.logger.handlers):
            ctx.logger.removeHandler(h)
            h.close()
    return rundir


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
