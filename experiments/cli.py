"""``python -m experiments`` (also the ``agora`` command): run, resume, list, gallery, tour, sweep.

Exit status and stderr:

* 0: done.
* 1: the experiment failed; one line names the run directory, whose log.txt has the traceback
  (tour, sweep: some runs failed; the page or figure is still written).
* 2: a user's mistake (config, command line, run directory); one line starting ``error:``,
  and nothing is written.
* 128 + N: stopped by signal N (143 for SIGTERM, 130 for Ctrl-C); the run is marked
  ``interrupted`` and `resume` continues it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from experiments.errors import UserError

EPILOG = """examples:
  python -m experiments run fedavg_digits --out runs/fed rounds=5
  agora tour                                     # every experiment, small, then the gallery (make demo)
  agora tour --out runs/tour                     # again into the same DIR: continues, skips finished runs
  agora sweep vicsek_transition steps=200,400 seeds=1,2 --seeds 0,1,2
  agora sweep fedavg_digits rounds=5,10 --address 10.0.0.1:6379 --out /shared/sweep
  python -m experiments resume runs/fed
  python -m experiments gallery runs/ --out runs/gallery.html
  python -m experiments run mappo_spread --import mypkg.envs train.env=mine/foo-v0
  agora play runs/mappo --episodes 3 --gif play.gif
  agora eval runs/mappo --episodes 100"""


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
    r.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register environments); repeatable; adds to the config's 'imports'")

    s = sub.add_parser("resume", help="continue a run from its last checkpoint", description="Continue the run in DIR from its last checkpoint.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--quiet", action="store_true", help="no progress bars or console log")

    sub.add_parser("list", help="list shipped configs and experiment kinds", description="List shipped configs and experiment kinds.")

    g = sub.add_parser("gallery", help="build one HTML page of runs", description="Build one static HTML page of the runs at or below each DIR.")
    g.add_argument("dirs", nargs="+", metavar="DIR")
    g.add_argument("--out", metavar="FILE", default=None, help="page to write (default DIR/gallery.html of the first DIR)")

    t = sub.add_parser("tour", help="a small run of every experiment, then the gallery page",
                       description="Run every entry of the tour CONFIG (default: the shipped tour.yaml) into DIR/runs/, "
                                   "then write DIR/gallery.html with its fourteen cards. The same DIR again continues.")
    t.add_argument("config", nargs="?", default="tour", metavar="CONFIG", help="a tour file (default: tour)")
    t.add_argument("--out", metavar="DIR", help="tour directory (default runs/tour-TIMESTAMP)")
    t.add_argument("--seed", type=int, metavar="N", help="seed of every run (default: the tour's)")
    t.add_argument("--quiet", action="store_true", help="no progress bars or console log")
    t.add_argument("--no-screenshot", action="store_true", help="do not screenshot the page with Chromium")

    w = sub.add_parser("sweep", help="run a config over the cross product of values on Ray",
                       description="Run CONFIG for every combination of the listed values (times --seeds), one run "
                                   "directory per point, as Ray tasks; re-running the same sweep skips complete points "
                                   "and resumes interrupted ones; ends with DIR/sweep.png.")
    w.add_argument("config", metavar="CONFIG")
    w.add_argument("specs", nargs="*", metavar="KEY=V1,V2,...", help="a swept key and its values (YAML each)")
    w.add_argument("--seeds", metavar="S1,S2,...", help="seeds of every point (default: the config's seed)")
    w.add_argument("--address", metavar="HOST:PORT", help="join this Ray cluster (default: start a local Ray)")
    w.add_argument("--out", metavar="DIR", help="sweep directory (default runs/sweep-NAME-HASH of the spec)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")

    from marl.play import add_commands  # `play` and `eval` of saved MARL policies

    add_commands(sub)
    return p


def _refuse_tour(config: str) -> None:
    """`run` of a tour file: say which command runs it (a tour is not an experiment kind)."""
    from experiments.config import read_yaml, resolve_config_path
    from experiments.tour import is_tour

    if is_tour(read_yaml(resolve_config_path(config))):
        raise UserError(f"{config!r} is a tour (a list of runs, no kind); run it with `agora tour {config}`")


def _list() -> None:
    from experiments.config import available_configs, read_yaml
    from experiments.kinds import all_kinds

    print("configs (python -m experiments run NAME):")
    for name, path in available_configs().items():
        data = read_yaml(path)
        kind = data.get("kind", "tour: `agora tour NAME`" if "runs" in data else "?")
        print(f"  {name:28s} [{kind}] {data.get('description', '')}")
    print("\nexperiment kinds:")
    for name, spec in all_kinds().items():
        print(f"  {name:28s} ({spec.axis}) {spec.description}")


def _on_sigterm(signum: int, frame: object) -> None:
    from experiments.runner import RunInterrupted

    raise RunInterrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`... | head -1`): stop quietly, and keep Python's own flush at
        # exit from failing on the closed pipe.
        with open(os.devnull, "w") as devnull:  # noqa: PTH123
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`run CFG --out D a=1`); argparse alone
    # stops collecting positionals at the first option.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("run", "sweep") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "run":
            args.overrides = [*args.overrides, *extra]
        else:
            args.specs = [*args.specs, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    from experiments.runner import RunInterrupted

    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        if args.command == "run":
            from experiments import runner

            _refuse_tour(args.config)
            rd = runner.run(args.config, out=args.out, overrides=args.overrides, seed=args.seed, quiet=args.quiet,
                            imports=args.imports)
            _report(rd)
        elif args.command == "resume":
            from experiments import runner

            _report(runner.resume(args.dir, quiet=args.quiet))
        elif args.command in ("play", "eval"):
            from marl.play import run_command

            return run_command(args)
        elif args.command == "list":
            _list()
        elif args.command == "gallery":
            from experiments import gallery

            out = Path(args.out) if args.out else Path(args.dirs[0]) / "gallery.html"
            page = gallery.build(args.dirs, out)
            print(page.resolve())
        elif args.command == "tour":
            from experiments.tour import run_tour

            res = run_tour(args.config, out=args.out, seed=args.seed, quiet=args.quiet,
                           screenshot=not args.no_screenshot)
            if res.failed:
                print(f"tour: {len(res.failed)} run(s) failed: {', '.join(res.failed)}", file=sys.stderr)
            print(f"tour: {res.wall_time_s:.0f} s in {res.path}" + (f"; screenshot {res.screenshot}" if res.screenshot else ""))
            print(f"gallery page: {res.page.resolve()}")
            return 1 if res.failed else 0
        elif args.command == "sweep":
            from experiments.sweep import run_sweep

            res = run_sweep(args.config, args.specs, seeds=args.seeds, address=args.address, out=args.out,
                            quiet=args.quiet)
            if res.failed:
                print(f"sweep: {len(res.failed)} of {res.points} points failed: {', '.join(res.failed[:20])}",
                      file=sys.stderr)
            print(f"sweep: {res.points - len(res.failed)} of {res.points} points complete in {res.path}")
            if res.figure:
                print(f"summary figure: {res.figure.resolve()}")
            return 1 if res.failed else 0
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (RunInterrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT
        where = getattr(exc, "rundir", None)
        hint = f"; `python -m experiments resume {where}` continues from the last checkpoint" if where else ""
        print(f"interrupted by {signal.Signals(signum).name}{hint}", file=sys.stderr)
        if argv is None and threading.active_count() > 1:
            # A program, not a call: threads an engine left blocked (Flower's server thread on a
            # Ray that is shut down) would hold the interpreter's exit forever. The run's state is
            # written and its processes are stopped, so leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        return 128 + signum
    except Exception as exc:
        where = getattr(exc, "agora_rundir", None)
        if where is None:
            raise  # not a run's failure: a bug of ours, and its traceback is the report
        print(f"failed: {where}: {_one_line(f'{type(exc).__name__}: {exc}')} (traceback in {Path(where) / 'log.txt'})",
              file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0


def _one_line(message: object, limit: int = 2000) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _report(rundir) -> None:  # noqa: ANN001
    summary = rundir.read_summary()
    print(f"{summary['status']}: {rundir.path}")
    for key, value in (summary.get("headline") or {}).items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
