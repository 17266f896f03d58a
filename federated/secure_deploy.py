"""Runs SecureFedAvg on Flower's deployment engine (SuperLink + SuperNodes) on this machine.

::

    python -m federated.secure_deploy --supernodes 3 --rounds 2

Reuses :class:`federated.deploy.LocalFederation` (processes on 127.0.0.1, free ports, every
process group stopped in ``finally``) and submits a small Flower project, written to the work
folder, whose components are this package's ServerApp and ClientApp (the one round loop,
``aggregation = "secure"``, and the ClientApp with ``secure_agg_mod``) and whose config holds
every ``secagg-*`` key (``flwr run`` accepts only overrides of keys the project declares).
Each round is read back from the ServerApp's checkpoint, and ``resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from federated.checkpoint import load_server_checkpoint
from federated.deploy import DeploymentError, LocalFederation, Terminated, stop_on_signals
from federated.secure_fedavg import SecAggParams, split_run_config
from federated.settings import FedSettings


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def write_project(folder: Path, run_config: dict[str, Any]) -> Path:
    """A Flower project whose components are the secure apps and whose config holds every key."""
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in run_config.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "agora-secagg"
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
    (folder / "secagg_app.py").write_text('"""The components live in the installed agora package (federated.secure_*)."""\n')
    return folder


def deploy_secure(overrides: dict[str, Any], *, workdir: str | Path | None = None,
                  timeout: float = 600.0) -> dict[str, Any]:
    """Runs the secure apps with ``overrides`` on ``num-partitions`` SuperNodes.

    Returns:
        ``{"weights", "history"}`` as :func:`federated.server_app.run_rounds` returns them
        (round 0 first); with ``resume`` and a checkpoint, the run continues from it.

    Raises:
        DeploymentError: The run stopped before its last round; every process is stopped first.
    """
    rest, params = split_run_config(overrides)
    settings = FedSettings.from_run_config(rest).replace(aggregation="secure")
    tmp = tempfile.mkdtemp(prefix="agora-secagg-deploy-") if workdir is None else None
    work = Path(tmp or workdir).resolve()
    if not settings.checkpoint_dir:
        settings = settings.replace(checkpoint_dir=str(work / "checkpoints"))
    run_config = {**settings.to_run_config(), **params.to_run_config()}
    project = write_project(work / "project", run_config)
    try:
        with LocalFederation(settings.num_partitions, work) as fed:
            proc = fed.submit(run_config, timeout, project=project)
            state = load_server_checkpoint(settings.checkpoint_dir)
            last = -1 if state is None else state["round"]
            if proc.returncode != 0 or last < settings.num_server_rounds:
                raise DeploymentError(f"secure deployment run stopped after round {max(last, 0)} of "
                                      f"{settings.num_server_rounds} (exit code {proc.returncode}); log:\n"
                                      f"{fed.tail('flwr-run', 4000)}")
            return {"weights": state["weights"], "history": state["history"]}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m federated.secure_deploy --supernodes N --rounds R``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernodes", type=int, default=3, help="SuperNodes (clients), >= 2")
    p.add_argument("--rounds", type=int, default=2, help="FedAvg rounds, >= 1")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--workdir", default=None, help="keep logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.supernodes < 2 or args.rounds < 1:
        p.error("--supernodes must be >= 2 and --rounds >= 1")
    overrides = {"num-server-rounds": args.rounds, "num-partitions": args.supernodes, "fraction-evaluate": 0.0,
                 "hidden": 16, **SecAggParams().to_run_config()}
    try:
        with stop_on_signals():
            result = deploy_secure(overrides, workdir=args.workdir, timeout=args.timeout)
    except Terminated as exc:
        print(f"interrupted by {exc}; every process of the run was stopped", file=sys.stderr)
        return 128 + exc.signum
    for rec in result["history"][1:]:
        print(json.dumps({k: v for k, v in rec.items() if k != "timing"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
