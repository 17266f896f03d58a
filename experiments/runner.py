"""Runs an experiment config into a run directory, and resumes one that did not finish."""

from __future__ import annotations

import datetime as _dt
import math
import signal
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
    imports: list[str] = (),  # type: ignore[assignment]
) -> tuple[KindSpec, Any, str]:
    """Reads, overrides and validates a config before anything is written.

    The modules named by ``imports`` and the config's ``imports`` key are imported first, so
    environments (or kinds) they register are known when the config is checked.

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
    if imports:
        listed = data.get("imports") if isinstance(data.get("imports"), list) else []
        data["imports"] = [*listed, *(m for m in imports if m not in listed)]
    import_user_modules(data.get("imports"))
    spec = get_kind(data.pop("kind", None))
    cfg = validate(spec.config, data, spec.name)
    return spec, cfg, name


def import_user_modules(modules: Any) -> None:
    """Imports each module a config names under ``imports`` (a user's own environments).

    Raises:
        UserError: naming the module and why it could not be imported.
    """
    import importlib

    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise UserError(f"config key 'imports' = {modules!r}: expected a list of module names")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 -- any failure of the user's module is theirs to fix
            raise UserError(f"config key 'imports': cannot import {module!r}: {type(exc).__name__}: {exc}") from None


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
    imports: list[str] = (),  # type: ignore[assignment]
) -> RunDir:
    """Runs ``config`` into ``out`` (default ``runs/NAME-TIMESTAMP``) and returns the run directory.

    Raises:
        UserError: for a bad config or output directory, before anything is written.
        RunInterrupted: on SIGTERM or Ctrl-C; the run is then marked ``interrupted``.
        Exception: whatever the experiment raised; the run is then marked ``failed``.
    """
    spec, cfg, name = prepare(config, overrides=overrides, seed=seed, imports=imports)
    rundir = RunDir(out if out is not None else default_out(name))
    resolved = {"kind": spec.name, **to_plain(cfg)}
    rundir.create(resolved)
    try:
        return _execute(rundir, spec, cfg, name, resume_state=None, quiet=quiet, resolved=resolved)
    finally:
        rundir.release_lock()


def resume(path: str | Path, *, quiet: bool = False) -> RunDir:
    """Continues the run in ``path`` from its last checkpoint.

    Raises:
        UserError: when ``path`` is not a run directory, another process works in it, the run
            finished, or the checkpoint does not match the directory (nothing is changed then).
    """
    rundir = RunDir(path)
    if not Path(path).is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if not RunDir.is_run(path):
        raise UserError(f"{str(path)!r} is not a run directory (it needs config.yaml and summary.json)")
    summary = rundir.read_summary()
    if summary["status"] == "complete":
        raise UserError(f"run {str(path)!r} already finished (status complete); start a new one with `run`")
    if summary["status"] == "running":
        raise UserError(f"run {str(path)!r} is still running (pid {summary.get('pid')}); stop it before resuming")
    try:
        rundir.acquire_lock()
    except OSError as exc:
        raise UserError(f"cannot resume {str(path)!r}: {exc.strerror or exc}") from None
    try:
        summary = rundir.read_summary()  # again, now that no other process can change it
        if summary["status"] == "complete":
            raise UserError(f"run {str(path)!r} already finished (status complete); start a new one with `run`")
        data = rundir.read_config()
        import_user_modules(data.get("imports"))
        spec = get_kind(data.pop("kind", None))
        cfg = validate(spec.config, data, spec.name)
        resolved = {"kind": spec.name, **data}
        state = load_checkpoint(rundir, resolved)
        return _execute(rundir, spec, cfg, summary.get("name", spec.name), resume_state=state, quiet=quiet,
                        previous=summary, resolved=resolved)
    finally:
        rundir.release_lock()


class RunInterrupted(BaseException):
    """A run stopped by a signal (SIGTERM, SIGINT); it is marked ``interrupted``.

    A BaseException, like KeyboardInterrupt, so that code catching ``Exception`` (a tour going
    on past a failed run) does not swallow a request to stop.

    Args:
        signum: The signal's number.
        rundir: The run directory, once one exists.
    """

    def __init__(self, signum: int, rundir: Path | None = None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.rundir = rundir


def _on_signal(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


def non_finite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """The path and value of the first NaN or infinite number in ``value`` (nested), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        try:
            bad = not math.isfinite(float(value))
        except (TypeError, ValueError):
            return None
        return (path or "<value>", value) if bad else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _execute(
    rundir: RunDir,
    spec: KindSpec,
    cfg: Any,
    name: str,
    *,
    resume_state: Any,
    quiet: bool,
    previous: dict[str, Any] | None = None,
    resolved: dict[str, Any] | None = None,
) -> RunDir:
    from experiments.rundir import _process_tag

    summary: dict[str, Any] = {
        "name": name,
        "kind": spec.name,
        "axis": spec.axis,
        "description": cfg.description or spec.description,
        "seed": cfg.seed,
        "status": "running",
        **_process_tag(),
        "started": (previous or {}).get("started") or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "resumed": (previous or {}).get("resumed", 0) + (1 if previous else 0),
        "headline": {},
    }
    rundir.write_summary(summary)
    ctx = RunContext(rundir, cfg.seed, quiet=quiet, resume_state=resume_state, config=resolved)
    ctx.info(f"{'resuming' if previous else 'starting'} {spec.name} ({name}) in {rundir.path}")
    main = _main_thread()
    old = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.signal(signal.SIGTERM, _on_signal)} \
        if main else {}
    t0 = time.perf_counter()
    try:
        headline = spec.run(cfg, ctx) or {}
        bad = non_finite(headline)
        if bad:
            raise FloatingPointError(f"headline value {bad[0]!r} is {bad[1]}, not a finite number")
    except (KeyboardInterrupt, RunInterrupted, SystemExit) as exc:
        # Ray's driver turns SIGTERM into sys.exit(15): that exit is an interruption; any other
        # SystemExit is a failure of the experiment.
        if isinstance(exc, SystemExit) and exc.code not in (signal.SIGTERM, signal.SIGINT):
            summary.update(status="failed", error=f"SystemExit: {exc.code}")
            ctx.info("".join(traceback.format_exception(exc)))
            exc.agora_rundir = rundir.path  # type: ignore[attr-defined]
            raise
        if main:  # a second signal must not tear the summary being written
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
        signum = exc.signum if isinstance(exc, RunInterrupted) else (
            signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.Signals(exc.code))
        summary.update(status="interrupted", error=f"interrupted by {signal.Signals(signum).name}")
        ctx.info(f"interrupted by {signal.Signals(signum).name}")
        raise RunInterrupted(signum, rundir.path) from exc
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        ctx.info("".join(traceback.format_exception(exc)))
        exc.agora_rundir = rundir.path  # type: ignore[attr-defined]  # the CLI names it
        raise
    else:
        summary.update(status="complete", headline=headline)
    finally:
        summary.update(
            finished=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            wall_time_s=round(time.perf_counter() - t0 + (previous or {}).get("wall_time_s", 0.0), 3),
            figures=[str(p.relative_to(rundir.path)) for p in rundir.figures()],
        )
        for key in ("pid", "host", "pid_start"):
            summary.pop(key, None)
        rundir.write_summary(summary)
        if main:
            for sig, handler in old.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    signal.signal(sig, handler)
        for h in list(ctx.logger.handlers):
            ctx.logger.removeHandler(h)
            h.close()
    return rundir


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
