"""Runs SecureFedAvg on Flower's deployment engine (SuperLink + SuperNodes) on this machine.

::

    python -m federated.secure_deploy --supernodes 3 --rounds 2

The same deployment as :func:`federated.deploy.deploy` (processes on 127.0.0.1, free ports,
every process group stopped in ``finally``, a project written for the run whose config holds
every key of the run's FedSettings, ``secagg-*`` included) with ``aggregation = "secure"``:
the one round loop and the ClientApp with ``secure_agg_mod``. Each round is read back from
the ServerApp's checkpoint, and ``resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from federated.deploy import Terminated, deploy, stop_on_signals
from federated.settings import FedSettings


def deploy_secure(overrides: dict[str, Any], *, workdir: str | Path | None = None,
                  timeout: float = 600.0) -> dict[str, Any]:
    """Runs the apps with ``aggregation = "secure"`` and the run-config ``overrides`` on
    ``num-partitions`` SuperNodes (:func:`federated.deploy.deploy`).

    Returns:
        ``{"weights", "history"}`` as :func:`federated.server_app.run_rounds` returns them
        (round 0 first); with ``resume`` and a checkpoint, the run continues from it.

    Raises:
        DeploymentError: The run stopped before its last round; every process is stopped first.
        ValueError: a bad run-config key or value.
    """
    return deploy(FedSettings.from_run_config(overrides).replace(aggregation="secure"), workdir=workdir,
                  timeout=timeout)


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
    overrides = {"num-server-rounds": args.rounds, "num-partitions": args.supernodes, "hidden": 16}
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
