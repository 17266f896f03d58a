"""One shared rich progress display, so nested runs (the tour) show their bars together."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console: Console | None = None
_progress: Progress | None = None
_active = 0


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def track(iterable: Iterable[Any], *, total: int | None = None, description: str = "", quiet: bool = False) -> Iterator[Any]:
    """Yields from ``iterable`` while advancing a bar in the shared display."""
    global _progress, _active
    if quiet:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _progress is None:
        _progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console(),
            transient=False,
        )
        _progress.start()
    _active += 1
    task = _progress.add_task(description or "working", total=total)
    try:
        for item in iterable:
            yield item
            _progress.advance(task)
    finally:
        _progress.remove_task(task)
        _active -= 1
        if _active == 0:
            _progress.stop()
            _progress = None
