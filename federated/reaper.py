"""A guard process that stops everything a process started once that process dies, even by SIGKILL.

::

    with ProcessGuard():          # in the process that starts servers, SuperNodes, Ray
        ...start processes...

A process killed with SIGKILL runs no ``finally`` and no ``atexit``: the Flower SuperLink and
SuperNodes it started (each in a session of its own, with their flower-superexec,
flwr-serverapp and flwr-clientapp children), or the Ray head it started, would run on. The
guard is a small separate process in a session of its own (so killing the watched process's
group does not take it along) that

* learns of the watched process's death through a pipe only that process holds: the kernel
  closes it however the process ends, so end-of-file is the signal;
* records the watched process's descendants every ``poll_s`` (by parent pid, with each
  process's start time so that a reused pid is never mistaken for one of them), since an
  orphan's parent pid no longer leads back to it;
* on end-of-file, unless the watched process wrote ``done`` into the pipe first (it left the
  ``with`` block), sends SIGTERM to every recorded process and to every process group one of
  them leads, waits ``grace_s``, then sends SIGKILL. (The word, not a look at the watched
  process: the kernel closes a dying process's files before it becomes a zombie, so at
  end-of-file a killed process may still look alive in /proc.)

Processes are found by parent pid, process group and start time, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":  # a zombie has exited already; only its parent's wait is missing
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def process_table() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent pid, process group, start time)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    return table


def descendants(root: int, table: dict[int, tuple[int, int, int]] | None = None) -> dict[int, int]:
    """Live descendants of ``root``: pid -> start time."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = table[pid][2]
            stack.extend(children.get(pid, []))
    return found


def stop_processes(recorded: dict[int, int], grace_s: float = 3.0) -> None:
    """SIGTERM, then after ``grace_s`` SIGKILL, to each recorded process still the same process.

    Process groups led by a recorded process get the signals too (a group leader that already
    exited may have left members behind).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        table = process_table()
        # A process started after the last record, by one of the recorded ones, belongs too.
        for pid, start in list(recorded.items()):
            if pid in table and table[pid][2] == start:
                recorded.update(descendants(pid, table))
        alive = {pid for pid, start in recorded.items() if pid in table and table[pid][2] == start}
        # A group whose leader is ours: the leader alive (same start time), or gone while the
        # group lives on (the kernel does not hand out a pid still in use as a group id).
        led = {g for _, g, _ in table.values()}
        groups = {pid for pid, start in recorded.items()
                  if pid in led and (pid not in table or table[pid][2] == start)}
        members = {pid for pid, (_, g, _) in table.items() if g in groups}
        for pid in alive | members:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if not alive and not members:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            table = process_table()
            if not any(pid in table and table[pid][2] == start for pid, start in recorded.items()) and \
                    not any(g in groups for _, g, _ in table.values()):
                return
            time.sleep(0.05)


#: What the watched process writes into the pipe when it leaves the ``with`` block alive.
DONE = b"done"


def _guard(watched: int, poll_s: float, grace_s: float) -> None:
    """The guard's loop: ``watched``'s end is end-of-file on stdin."""
    import selectors

    recorded: dict[int, int] = {}
    said = b""
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        recorded.update(descendants(watched))
        recorded.pop(os.getpid(), None)
        if sel.select(timeout=poll_s):
            data = os.read(sys.stdin.fileno(), 4096)
            if not data:
                break
            said += data
    if DONE not in said:  # the watched process died inside the block
        recorded.pop(os.getpid(), None)
        stop_processes(recorded, grace_s)


class ProcessGuard:
    """Starts a guard process for this process (see the module docstring); a context manager.

    Args:
        poll_s: Seconds between two records of this process's descendants.
        grace_s: Seconds between SIGTERM and SIGKILL once this process has died.
    """

    def __init__(self, poll_s: float = 0.2, grace_s: float = 3.0) -> None:
        self.poll_s, self.grace_s = poll_s, grace_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_fd: int | None = None

    def __enter__(self) -> ProcessGuard:
        if not sys.platform.startswith("linux"):
            return self  # /proc is Linux's; elsewhere the usual clean-up in `finally` is all
        read_fd, self._write_fd = os.pipe()  # not inheritable: only this process holds the write end
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "federated.reaper", str(os.getpid()), str(self.poll_s), str(self.grace_s)],
                stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(read_fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._write_fd is not None:
            os.write(self._write_fd, DONE)  # a normal exit: the guard leaves everything alone
            os.close(self._write_fd)
            self._write_fd = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    # python -m federated.reaper WATCHED_PID POLL_S GRACE_S, stdin the pipe's read end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the watched process
    _guard(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
