"""``python -m experiments`` (also the ``agora`` command): run, resume, list, gallery.

A user's mistake prints one line starting with ``error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.errors import UserError

EPILOG = """examples:
  python -m experiments run fedavg_digits --out runs/fed rounds=5
  python -m experiments run experiments/configs/tour.yaml --seed 1
  python -m experiments resume runs/fed
  python -m experiments gallery runs/ --out runs/gallery.html"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agora",
        description="Run Agora experiments into run directories, resume them, and draw the gallery.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run an experiment config", description="Run CONFIG (a path or a shipped config name) into a new run directory.")
    r.add_argument("config", metavar="CONFIG")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config key (key.sub=value, value parsed as YAML)")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/NAME-TIMESTAMP); must not exist or be empty")
    r.add_argument("--seed", type=int, metavar="N", help="override the config's seed")
    r.add_argument("--quiet", action="store_true", help="no progress bars or console log")

    s = sub.add_parser("resume", help="continue a run from its last checkpoint", description="Continue the run in DIR from its last checkpoint.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--quiet", action="store_true", help="no progress bars or console log")

    sub.add_parser("list", help="list shipped configs and experiment kinds", description="List shipped configs and experiment kinds.")

    g = sub.add_parser("gallery", help="build one HTML page of runs", description="Build one static HTML page of the runs at or below each DIR.")
    g.add_argument("dirs", nargs="+", metavar="DIR")
    g.add_argument("--out", metavar="FILE", default=None, help="page to write (default DIR/gallery.html of the first DIR)")
    return p


def _list() -> None:
    from experiments.config import available_configs, read_yaml
    from experiments.kinds import all_kinds

    print("configs (python -m experiments run NAME):")
    for name, path in available_configs().items():
        data = read_yaml(path)
        print(f"  {name:28s} [{data.get('kind', '?')}] {data.get('description', '')}")
    print("\nexperiment kinds:")
    for name, spec in all_kinds().items():
        print(f"  {name:28s} ({spec.axis}) {spec.description}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`run CFG --out D a=1`); argparse alone
    # stops collecting positionals at the first option.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "run" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            from experiments import runner

            rd = runner.run(args.config, out=args.out, overrides=args.overrides, seed=args.seed, quiet=args.quiet)
            _report(rd)
        elif args.command == "resume":
            from experiments import runner

            _report(runner.resume(args.dir, quiet=args.quiet))
        elif args.command == "list":
            _list()
        elif args.command == "gallery":
            from experiments import gallery

            out = Path(args.out) if args.out else Path(args.dirs[0]) / "gallery.html"
            page = gallery.build(args.dirs, out)
            print(page.resolve())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `python -m experiments resume DIR` continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def _report(rundir) -> None:  # noqa: ANN001
    summary = rundir.read_summary()
    print(f"{summary['status']}: {rundir.path}")
    for key, value in (summary.get("headline") or {}).items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
