"""``agora sweep CONFIG key=v1,v2 [key2=...] [--seeds 0,1,2] [--address HOST:PORT]``.

The cross product of the swarm of values (times the seeds) runs as separate run directories,
each point one Ray task that runs ``python -m experiments run`` (or ``resume``) in a child
process, so any experiment kind sweeps, including kinds that start their own Ray or process
groups. A local Ray by default; ``--address`` joins a running cluster (the run directories are
then written by whichever node runs the point: give the cluster a shared ``--out``).

::

    DIR/sweep.yaml        the sweep (config, keys, values, seeds) and its points
    DIR/points/NNN-.../   one run directory per point
    DIR/sweep.jsonl       one line per finished point: its values, seed, status, headline
    DIR/sweep.png         each headline number against the first swept key, mean and
                          min-max over seeds (one line per value of the other keys)

Every point is validated before Ray starts; a bad spec exits 2 with one line. Running the same
sweep again into the same DIR (the default DIR is derived from the spec, so re-running the
command is enough) skips complete points and resumes interrupted ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.config import load_yaml, read_yaml, resolve_config_path
from experiments.errors import UserError
from experiments.rundir import RunDir, atomic_write_text

MAX_POINTS = 10_000


@dataclass(frozen=True)
class Axis:
    """One swept key and its values (as parsed from YAML) with their command-line spellings."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One run of the sweep."""

    name: str
    values: dict[str, Any]
    overrides: tuple[str, ...]
    seed: int | None


def split_values(text: str) -> list[str]:
    """``'1,[2,3],{a: 4}'`` -> ``['1', '[2,3]', '{a: 4}']``: commas inside brackets or quotes stay."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_axes(specs: list[str]) -> list[Axis]:
    """``['noise=0.1,0.5', 'n=10,20']`` -> one :class:`Axis` each.

    Raises:
        UserError: for a spec without ``=``, a key given twice, an empty or unparseable value.
    """
    if not specs:
        raise UserError("sweep: give at least one KEY=V1,V2,... to sweep")
    axes: list[Axis] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")) or not re.fullmatch(r"[\w.\-]+", key):
            raise UserError(f"sweep spec {spec!r} is not of the form key=v1,v2,... (key.sub=... for a section)")
        if any(a.key == key for a in axes):
            raise UserError(f"sweep key {key!r} is given twice; list all its values once: {key}=v1,v2,...")
        texts = split_values(raw)
        if raw.strip() == "" or any(t == "" for t in texts):
            raise UserError(f"sweep key {key!r}: empty value in {raw!r}; expected {key}=v1,v2,...")
        values = []
        for t in texts:
            try:
                values.append(load_yaml(t))
            except (yaml.YAMLError, UserError) as exc:
                raise UserError(f"sweep key {key!r}: value {t!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise UserError(f"sweep key {key!r} lists a value twice: {raw!r}")
        axes.append(Axis(key, tuple(values), tuple(texts)))
    return axes


def parse_seeds(text: str | None) -> list[int | None]:
    """``'0,1,2'`` -> ``[0, 1, 2]``; None -> ``[None]`` (the config's own seed).

    Raises:
        UserError: for anything but distinct integers in 0 .. 2**32-1.
    """
    if text is None:
        return [None]
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not re.fullmatch(r"\d+", p) for p in parts):
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2")
    seeds = [int(p) for p in parts]
    if any(s > 2**32 - 1 for s in seeds):
        raise UserError(f"--seeds {text!r}: each seed must be in 0 .. {2**32 - 1}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} lists a seed twice")
    return seeds


def check_address(address: str | None) -> None:
    """Refuses a ``--address`` that is not HOST:PORT (or ``auto``)."""
    if address is None or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--address {address!r}: expected HOST:PORT of a Ray head (e.g. 127.0.0.1:6379) or 'auto'")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,_-]+", "_", text)[:80]


def plan(config: str, axes: list[Axis], seeds: list[int | None]) -> list[Point]:
    """Every point of the cross product, each validated as a run would be.

    Raises:
        UserError: naming the point and its config error, before anything is written.
    """
    from experiments.runner import prepare

    path = resolve_config_path(config)
    data = read_yaml(path)
    from experiments.tour import is_tour

    if is_tour(data):
        raise UserError(f"{config!r} is a tour, not an experiment config; sweep one of its runs' configs instead")
    total = math.prod(len(a.values) for a in axes) * len(seeds)
    if total > MAX_POINTS:
        raise UserError(f"sweep has {total} points; at most {MAX_POINTS}")
    points = []
    combos = list(itertools.product(*[list(zip(a.values, a.texts, strict=True)) for a in axes]))
    for combo in combos:
        overrides = tuple(f"{a.key}={text}" for a, (_, text) in zip(axes, combo, strict=True))
        label = ",".join(f"{a.key}={text}" for a, (_, text) in zip(axes, combo, strict=True))
        for seed in seeds:
            try:
                prepare(path, overrides=list(overrides), seed=seed)
            except UserError as exc:
                raise UserError(f"sweep point {label}: {exc}") from None
            name = f"{len(points):03d}-{_slug(label)}" + ("" if seed is None else f",seed={seed}")
            points.append(Point(name, {a.key: v for a, (v, _) in zip(axes, combo, strict=True)}, overrides, seed))
    return points


def default_out(config: str, axes: list[Axis], seeds: list[int | None]) -> Path:
    """``runs/sweep-NAME-HASH``: the same sweep maps to the same folder, so re-running resumes it."""
    spec = json.dumps([str(resolve_config_path(config).resolve()), [[a.key, list(a.texts)] for a in axes], seeds])
    return Path("runs") / f"sweep-{resolve_config_path(config).stem}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _record(config: str, axes: list[Axis], seeds: list[int | None], points: list[Point]) -> dict[str, Any]:
    return {"config": str(resolve_config_path(config).resolve()),
            "axes": [{"key": a.key, "values": list(a.texts)} for a in axes],
            "seeds": seeds,
            "points": [p.name for p in points]}


def _child_dies_with_parent() -> None:
    # Linux: the point's process gets SIGTERM when its Ray worker dies, so a killed sweep leaves
    # its runs marked `interrupted` (resumable) instead of orphans still holding their locks.
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_point(config: str, out: str, overrides: list[str], seed: int | None, cwd: str) -> dict[str, Any]:
    """Runs or resumes one point in a child ``python -m experiments`` (the body of a Ray task).

    Returns:
        The point's ``status``, ``headline``, and the last lines of the child's output on failure.
    """
    import subprocess

    from experiments.tour import next_step

    target = Path(out)
    step = next_step(target)
    if step != "complete":
        if step == "resume":
            argv = ["resume", out, "--quiet"]
        else:
            argv = ["run", config, "--out", out, "--quiet", *overrides] + ([] if seed is None else ["--seed", str(seed)])
        # The child starts its own engines (a kind may start a local Ray): it must not inherit
        # this worker's connection to the sweep's cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        proc = subprocess.run([sys.executable, "-m", "experiments", *argv], capture_output=True, text=True,
                              env=env, cwd=cwd if os.path.isdir(cwd) else None, preexec_fn=_child_dies_with_parent)
        if not RunDir.is_run(target):
            return {"status": "failed", "headline": {}, "error": (proc.stderr or proc.stdout).strip()[-2000:]}
    summary = RunDir(target).read_summary()
    return {"status": summary["status"], "headline": summary.get("headline") or {}, "error": summary.get("error")}


@dataclass
class SweepResult:
    """What a sweep did: its folder, its figure, and the points that did not complete."""

    path: Path
    figure: Path | None
    points: int
    failed: list[str]


def run_sweep(config: str, specs: list[str], *, seeds: str | None = None, address: str | None = None,
              out: str | Path | None = None, quiet: bool = False, num_cpus: int | None = None) -> SweepResult:
    """Runs every point of the sweep on Ray (see the module docstring).

    Raises:
        UserError: for a bad spec, seeds, address or output folder, before Ray starts.
    """
    axes = parse_axes(specs)
    seed_list = parse_seeds(seeds)
    check_address(address)
    points = plan(config, axes, seed_list)
    root = Path(out) if out is not None else default_out(config, axes, seed_list)
    record = _record(config, axes, seed_list, points)
    spec_file = root / "sweep.yaml"
    if spec_file.is_file():
        if yaml.safe_load(spec_file.read_text()) != record:
            raise UserError(f"{str(root)!r} holds another sweep (its sweep.yaml differs); choose a new --out")
    else:
        RunDir(root).check_new()
    (root / "points").mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_file, yaml.safe_dump(record, sort_keys=False))

    import ray

    say = (lambda *_: None) if quiet else (lambda text: print(text, flush=True))
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 -- Ray raises ConnectionError, RuntimeError, ...
            raise UserError(f"sweep: cannot start or join Ray{f' at {address}' if address else ''}: "
                            f"{' '.join(str(exc).split())[:300]}") from None
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        cwd = os.getcwd()
        pending = {task.remote(str(resolve_config_path(config).resolve()), str((root / "points" / p.name).resolve()),
                               list(p.overrides), p.seed, cwd): p for p in points}
        say(f"sweep: {len(points)} points into {root} on Ray "
            f"({address or 'local'}, {int(ray.cluster_resources().get('CPU', 0))} CPUs)")
        results: dict[str, dict[str, Any]] = {}
        lines = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            p = pending.pop(done[0])
            try:
                res = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 -- a lost worker is that point's failure
                res = {"status": "failed", "headline": {}, "error": f"{type(exc).__name__}: {exc}"}
            results[p.name] = res
            lines.append(json.dumps({"point": p.name, **{k: _plain(v) for k, v in p.values.items()}, "seed": p.seed,
                                     "status": res["status"], "headline": res["headline"]}, default=str))
            say(f"sweep [{len(results)}/{len(points)}] {p.name}: {res['status']}"
                + (f" ({' '.join(str(res.get('error')).split())[:200]})" if res["status"] != "complete" else ""))
    finally:
        if started:
            ray.shutdown()
    order = {p.name: i for i, p in enumerate(points)}
    lines.sort(key=lambda line: order[json.loads(line)["point"]])
    atomic_write_text(root / "sweep.jsonl", "\n".join(lines) + "\n")
    figure = summary_figure(points, results, axes, root / "sweep.png")
    failed = [name for name, r in results.items() if r["status"] != "complete"]
    return SweepResult(root, figure, len(points), sorted(failed, key=order.__getitem__))


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def aggregate(points: list[Point], results: dict[str, dict[str, Any]], axes: list[Axis]) -> list[dict[str, Any]]:
    """Mean, min and max over seeds of every numeric headline, per combination of swept values.

    Returns:
        One row per (combination, headline key): the swept keys' values as typed on the
        command line, ``headline``, ``mean``, ``min``, ``max`` and ``seeds`` (how many points).
    """
    done = [(p, results[p.name]["headline"]) for p in points if results.get(p.name, {}).get("status") == "complete"]
    keys = [k for k in dict.fromkeys(k for _, h in done for k in h) if any(_number(h.get(k)) is not None for _, h in done)]
    rows = []
    for combo in itertools.product(*[a.texts for a in axes]):
        wanted = {f"{a.key}={t}" for a, t in zip(axes, combo, strict=True)}
        for key in keys:
            vals = [v for p, h in done if wanted <= set(p.overrides) and (v := _number(h.get(key))) is not None]
            if vals:
                rows.append({**{a.key: t for a, t in zip(axes, combo, strict=True)}, "headline": key,
                             "mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "seeds": len(vals)})
    return rows


def summary_figure(points: list[Point], results: dict[str, dict[str, Any]], axes: list[Axis], png: Path) -> Path | None:
    """Each numeric headline against the first swept key: mean and min-max over seeds.

    The first key with more than one value is the x axis; the other such keys give one line
    per combination of their values; the numbers drawn go to
    ``sweep_summary.json`` beside the figure. Returns None when no point completed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(points, results, axes)
    atomic_write_text(png.with_name("sweep_summary.json"), json.dumps(rows, indent=1))
    keys = list(dict.fromkeys(r["headline"] for r in rows))
    if not keys:
        return None
    # Keys given one value are fixed for the whole sweep: they get no line of their own.
    swept = [a for a in axes if len(a.values) > 1] or axes[:1]
    fixed = [a for a in axes if a not in swept]
    first, rest = swept[0], swept[1:]
    numeric_x = all(_number(v) is not None and not isinstance(v, bool) for v in first.values)
    xs = [float(v) for v in first.values] if numeric_x else list(range(len(first.values)))
    cols = min(3, len(keys))
    fig, grid = plt.subplots(-(-len(keys) // cols), cols, figsize=(4.2 * cols, 3.0 * -(-len(keys) // cols)),
                             squeeze=False, layout="constrained")
    for ax, key in zip(grid.flat, keys, strict=False):
        for group in itertools.product(*[a.texts for a in rest]):
            at = {r[first.key]: r for r in rows if r["headline"] == key
                  and all(r[a.key] == t for a, t in zip(rest, group, strict=True))}
            stat = [[at[t][s] if t in at else float("nan") for t in first.texts] for s in ("mean", "min", "max")]
            label = ", ".join(f"{a.key}={t}" for a, t in zip(rest, group, strict=True)) or None
            line = ax.plot(xs, stat[0], "o-", ms=3, label=label)[0]
            ax.fill_between(xs, stat[1], stat[2], color=line.get_color(), alpha=0.2)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel(first.key, fontsize=8)
        if not numeric_x:
            ax.set_xticks(xs, list(first.texts), fontsize=7)
        ax.tick_params(labelsize=7)
        if rest:
            ax.legend(fontsize=6)
    for ax in list(grid.flat)[len(keys):]:
        ax.set_visible(False)
    seeds = sorted({str(p.seed) for p in points})
    also = f"; fixed: {', '.join(f'{a.key}={a.texts[0]}' for a in fixed)}" if fixed else ""
    fig.suptitle(f"sweep of {first.key}: mean and min-max over seeds {', '.join(seeds)}{also}", fontsize=9)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
