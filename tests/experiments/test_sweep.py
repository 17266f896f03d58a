"""`agora sweep`: bad specs refused before anything runs; a real sweep on a Ray head started here.

The Ray head is `ray start --head --block` on a free port of 127.0.0.1 (2 CPUs, no dashboard),
in its own process group and temp folder; the fixture stops exactly those processes, even when
the test fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.rundir import RunDir
from experiments.sweep import parse_axes, split_values

# The process helpers of the Solara app test (a free port of 127.0.0.1, stopping a process group).
_spec = importlib.util.spec_from_file_location("_swarm_app_procs", Path(__file__).parents[1] / "swarm" / "test_app.py")
_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_app)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["gang_scheduling", "jobz=5,6"], "jobz"),                              # unknown key
    (["gang_scheduling", "jobs=5,zero"], "sweep point jobs=zero"),          # bad value for the field
    (["gang_scheduling", "jobs=0,5"], "sweep point jobs=0"),                # out of bounds
    (["gang_scheduling", "jobs="], "empty value"),                          # empty list
    (["gang_scheduling", "jobs=5,,6"], "empty value"),
    (["gang_scheduling", "jobs=5,5"], "twice"),
    (["gang_scheduling", "jobs=5", "jobs=6"], "given twice"),
    (["gang_scheduling"], "at least one KEY=V1,V2"),
    (["gang_scheduling", "jobs=5,6", "--seeds", "0,x"], "--seeds '0,x'"),  # bad seeds
    (["gang_scheduling", "jobs=5,6", "--seeds", ""], "--seeds ''"),
    (["gang_scheduling", "jobs=5,6", "--seeds", "1,1"], "twice"),
    (["gang_scheduling", "jobs=5,6", "--seeds", "-1"], "--seeds '-1'"),
    (["gang_scheduling", "jobs=5,6", "--address", "nohost"], "HOST:PORT"),
    (["tour", "seed=1,2"], "is a tour"),
    (["no_such_config", "a=1,2"], "not found"),
])
def test_bad_sweep_specs_exit_2_with_one_line_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, "--out", str(out), "--quiet"]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["sweep", "tour"])
def test_help_of_the_new_commands(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and "usage: agora " + command in capsys.readouterr().out


def test_values_split_at_top_level_commas_only():
    assert split_values("1,[2,3],{a: 4, b: 5},'x,y'") == ["1", "[2,3]", "{a: 4, b: 5}", "'x,y'"]
    (axis,) = parse_axes(["train.lr=0.001,0.003"])
    assert axis.key == "train.lr" and axis.values == (0.001, 0.003)


@pytest.fixture
def ray_head() -> Iterator[str]:
    port = _app._free_port()
    temp = tempfile.mkdtemp(prefix="agray", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in (Path(temp) / "head.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(proc, temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stop_head(proc: subprocess.Popen, temp: str) -> None:
    """Stops the head's process group, then any process of this head that left it (by its temp dir)."""
    _app._stop(proc)
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp in part for part in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_sweep_joins_a_ray_head_and_resumes_unfinished_points(tmp_path, ray_head, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "gang_scheduling", "jobs=4,8", "arrival_rates=[1.0]", "trials=1", "--seeds", "0,1",
            "--address", ray_head, "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "sweep: 4 points" in stdout and "[4/4]" in stdout and f"summary figure: {(out / 'sweep.png').resolve()}" in stdout
    points = sorted((out / "points").iterdir())
    assert [p.name for p in points] == ["000-jobs=4,arrival_rates=_1.0_,trials=1,seed=0",
                                        "001-jobs=4,arrival_rates=_1.0_,trials=1,seed=1",
                                        "002-jobs=8,arrival_rates=_1.0_,trials=1,seed=0",
                                        "003-jobs=8,arrival_rates=_1.0_,trials=1,seed=1"]
    summaries = [RunDir(p).read_summary() for p in points]
    assert [s["status"] for s in summaries] == ["complete"] * 4 and [s["seed"] for s in summaries] == [0, 1, 0, 1]
    assert [RunDir(p).read_config()["jobs"] for p in points] == [4, 4, 8, 8]

    # The figure's numbers: mean and spread over the two seeds, against a plain mean.
    rows = json.loads((out / "sweep_summary.json").read_text())
    key = "greedy_mean_jct_at_rate_1.0"
    for jobs, pair in (("4", summaries[:2]), ("8", summaries[2:])):
        vals = [s["headline"][key] for s in pair]
        (row,) = [r for r in rows if r["jobs"] == jobs and r["headline"] == key]
        assert row["mean"] == pytest.approx(sum(vals) / 2) and (row["min"], row["max"]) == (min(vals), max(vals))
        assert row["seeds"] == 2
    assert (out / "sweep.png").stat().st_size > 10_000

    # A crash: one point left interrupted, one never started. The same sweep again runs only those.
    done = points[0] / "summary.json"
    before = done.read_text()
    broken = RunDir(points[1])
    s = broken.read_summary()
    s["status"] = "interrupted"
    broken.write_summary(s)
    shutil.rmtree(points[3])
    assert main(argv) == 0
    assert done.read_text() == before  # a complete point is not run again
    assert RunDir(points[1]).read_summary()["resumed"] == 1
    assert RunDir(points[3]).read_summary()["status"] == "complete"
    # A different sweep into the same folder is refused.
    assert main(["sweep", "gang_scheduling", "jobs=4,9", "--out", str(out), "--quiet"]) == 2
    assert "holds another sweep" in capsys.readouterr().err
