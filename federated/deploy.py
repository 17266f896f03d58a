"""Runs the same ServerApp and ClientApp on Flower's deployment engine, on this machine.

::

    python -m federated.deploy --supernodes 3 --rounds 2 --out /tmp/fed-deploy

starts one ``flower-superlink --insecure`` and N ``flower-supernode --insecure`` processes on
127.0.0.1 (free ports; each SuperNode gets ``--node-config "partition-id=i num-partitions=N"``
and its own ClientApp-IO port), submits the app with ``flwr run <project> <connection>
--stream``, reads the per-round records from the ServerApp's checkpoint, and stops every
process group it started in ``finally``, also when a step fails. The project submitted is
written for the run (:func:`write_project`): the package's ServerApp and ClientApp, and the
run's :class:`federated.settings.FedSettings` as its config.

flwr 1.41 keeps SuperLink connections in ``$FLWR_HOME/config.toml``; this module gives each
run its own ``FLWR_HOME`` (a temporary folder) holding one connection to its own SuperLink,
so nothing outside the run is read or written.

Nothing outlives the run: SIGTERM (and Ctrl-C) to ``python -m federated.deploy`` stops every
process through the same ``finally`` (exit 143, one line), and a :class:`federated.reaper.ProcessGuard`
started with the federation stops them if this process is killed outright (SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federated.checkpoint import load_server_checkpoint
from federated.reaper import ProcessGuard
from federated.settings import FedSettings

CONNECTION = "agora-deploy"


class DeploymentError(RuntimeError):
    """The deployment engine did not finish the run; the message says where it stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    # The console scripts sit next to this interpreter in a virtual environment.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"{name!r} not found next to {sys.executable} or on PATH (install flwr)")
    return found


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_project(folder: Path, run_config: dict[str, Any]) -> Path:
    """A Flower project running this package's apps with ``run_config`` as its config.

    ``flwr run`` accepts ``--run-config`` overrides only of keys its project declares; the
    project written here declares the run's own keys (a FedSettings' ``to_run_config``), so
    no hand-kept table of keys and defaults is involved.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in run_config.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "agora-federated-run"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "agora"

[tool.flwr.app.components]
serverapp = "federated.server_app:app"
clientapp = "federated.client_app:app"

[tool.flwr.app.config]
{config}
""")
    (folder / "run_app.py").write_text('"""The components live in the installed agora package (federated.*)."""\n')
    return folder


def _run_config_args(config: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace('"', "") + '"'
        return repr(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in config.items())


@dataclass
class LocalFederation:
    """A SuperLink and N SuperNodes as process groups on 127.0.0.1.

    Use as a context manager; leaving it stops every process group, whatever happened.

    Args:
        num_supernodes: SuperNodes to start; SuperNode ``i`` holds partition ``i``.
        workdir: Folder for FLWR_HOME and the processes' logs.
        startup_timeout: Seconds to wait for the SuperLink's HTTP API.
    """

    num_supernodes: int
    workdir: Path
    startup_timeout: float = 60.0
    port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    guard: ProcessGuard | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLWR_HOME=str(self.workdir / "flwr-home"), FLWR_DISABLE_UPDATE_CHECK="1",
                   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
        # The SuperLink and SuperNodes start flower-superexec / flwr-serverapp / flwr-clientapp
        # by name, so this interpreter's scripts folder goes first on PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        # A new session: the process and the app processes it spawns form one group to kill.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def __enter__(self) -> LocalFederation:
        # First the guard, so that even a SIGKILL during start-up leaves nothing behind.
        self.guard = ProcessGuard().__enter__()
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self.guard is not None:
                self.guard.__exit__()
                self.guard = None

    def start(self) -> None:
        """Starts the SuperLink, waits for its API, writes the connection, starts the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        link = self._spawn("superlink", [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                         "--port", str(self.port), "--isolation", "subprocess",
                                         "--disable-runtime-dependency-installation"])
        self._wait_health(link)
        for i in range(self.num_supernodes):
            self._spawn(f"supernode-{i}", [
                _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--host", "127.0.0.1", "--port", str(free_port()), "--isolation", "subprocess",
                "--node-config", f"partition-id={i} num-partitions={self.num_supernodes}",
                "--max-wait-time", "60",
            ])

    def _wait_health(self, link: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if link.poll() is not None:
                raise DeploymentError(f"flower-superlink exited with code {link.returncode}; see "
                                      f"{self.workdir / 'superlink.log'}:\n{self.tail('superlink')}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.3)
        raise DeploymentError(f"flower-superlink did not answer on 127.0.0.1:{self.port} within "
                              f"{self.startup_timeout:.0f} s")

    def tail(self, name: str, chars: int = 3000) -> str:
        """The end of process ``name``'s log."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def alive(self) -> list[int]:
        """Pids of started processes still running."""
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self, grace: float = 5.0) -> None:
        """Stops every process started here and everything they started.

        The SuperLink starts ``flower-superexec`` in a session of its own, so the process
        groups alone do not reach it: descendants are collected first, then the groups get
        SIGTERM, and whatever is left (group or descendant) gets SIGKILL.
        """
        import psutil

        family: dict[int, psutil.Process] = {}
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(p.pid)
                for q in [root, *root.children(recursive=True)]:
                    family[q.pid] = q
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
            for q in family.values():
                with contextlib.suppress(psutil.Error):
                    q.send_signal(sig)
            _, still = psutil.wait_procs(list(family.values()), timeout=grace)
            for p in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.5 if still else grace)
            if not still and not self.alive():
                break

    def submit(self, run_config: dict[str, Any], timeout: float,
               project: Path | None = None) -> subprocess.CompletedProcess:
        """``flwr run <project> <connection> --stream`` with ``run_config`` overrides.

        Args:
            run_config: The run's config (overrides of the project's keys).
            timeout: Seconds before the run counts as failed.
            project: A Flower project folder; default: one written by :func:`write_project`
                with ``run_config`` as its config.
        """
        project = project or write_project(self.workdir / "project", run_config)
        argv = [_bin("flwr"), "run", str(project), CONNECTION, "--stream",
                "--run-config", _run_config_args(run_config)]
        with (self.workdir / "flwr-run.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.workdir, start_new_session=True)
            self.procs.append(proc)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeploymentError(f"`flwr run` did not finish within {timeout:.0f} s; log:\n"
                                      f"{self.tail('flwr-run')}") from None
        return subprocess.CompletedProcess(argv, proc.returncode)


def deploy(settings: FedSettings, *, workdir: str | Path | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Runs ``settings`` on the deployment engine with ``settings.num_partitions`` SuperNodes.

    Args:
        settings: The run. Its ``checkpoint_dir`` receives the per-round checkpoint (a
            folder under ``workdir`` when empty).
        workdir: Logs and FLWR_HOME (a temporary folder, removed afterwards, when None).
        timeout: Seconds for the whole run before everything is stopped.

    Returns:
        ``{"weights", "history"}`` as :func:`federated.server_app.run_rounds` returns them.

    Raises:
        DeploymentError: when the run stops before its last round (too few replies, a crashed
            process, the timeout); every process is stopped first and the checkpoint kept.
    """
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="agora-deploy-")
        workdir = tmp
    workdir = Path(workdir).resolve()
    if not settings.checkpoint_dir:
        settings = settings.replace(checkpoint_dir=str(workdir / "checkpoints"))
    try:
        with LocalFederation(settings.num_partitions, workdir) as fed:
            done = fed.submit(settings.to_run_config(), timeout)
            state = load_server_checkpoint(settings.checkpoint_dir)
            last = -1 if state is None else state["round"]
            if done.returncode != 0 or last < settings.num_server_rounds:
                log = fed.tail("flwr-run", 6000)
                reason = next((ln.strip() for ln in reversed(log.splitlines())
                               if "TooFewReplies" in ln or "Error" in ln), "see the log")
                raise DeploymentError(
                    f"deployment run stopped after round {max(last, 0)} of {settings.num_server_rounds} "
                    f"(flwr run exit code {done.returncode}): {reason}")
            return {"weights": state["weights"], "history": state["history"]}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived; raised in the main thread so every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Any:
    """Turns SIGTERM and SIGINT into :class:`Terminated` inside the block (main thread only)."""
    def raise_terminated(signum: int, frame: Any) -> None:
        # Once: a second signal must not interrupt the clean-up the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Terminated(signum)

    old = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            if handler is not None:
                signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m federated.deploy``: exit 0 on success, 2 on bad input, 1 on a failed run, 128+N on signal N."""
    p = argparse.ArgumentParser(description="FedAvg on Flower's deployment engine (local processes)")
    p.add_argument("--supernodes", type=int, default=3, help="SuperNodes (clients), default 3")
    p.add_argument("--rounds", type=int, default=3, help="FedAvg rounds, default 3")
    p.add_argument("--dataset", default="digits", help="digits or breast_cancer")
    p.add_argument("--partitioner", default="dirichlet", help="iid, dirichlet or pathological")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha (> 0)")
    p.add_argument("--min-replies", type=int, default=1, help="fewest successful replies per round")
    p.add_argument("--faults", default="", help="ROUND:PARTITION:MODE,... (raise, exit, hang)")
    p.add_argument("--round-timeout", type=float, default=60.0, help="seconds per round")
    p.add_argument("--out", default=None, help="folder for logs and the checkpoint (default: temporary)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    a = p.parse_args(argv)
    try:
        settings = FedSettings.create(num_partitions=a.supernodes, num_server_rounds=a.rounds, dataset=a.dataset,
                                      partitioner=a.partitioner, alpha=a.alpha, min_replies=a.min_replies,
                                      faults=a.faults, round_timeout=a.round_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with stop_on_signals():
            result = deploy(settings, workdir=a.out, timeout=a.timeout)
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"interrupted by {exc}; every process of the run was stopped", file=sys.stderr)
        return 128 + exc.signum
    for rec in result["history"]:
        print(f"round {rec['round']:3d}  test_acc {rec['test_acc']:.4f}  replies {rec['replies']}  "
              f"failures {rec['failures']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
