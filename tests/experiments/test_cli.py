"""The command line: bad input exits 2 with one line and no traceback, and writes nothing."""

import os
import subprocess
import sys

import pytest

from experiments import runner
from experiments.cli import main


def cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, env=env, timeout=120)


def one_error_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_missing_config_file_exits_2_and_writes_nothing(tmp_path):
    p = cli("run", "no_such_config", "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "no_such_config" in one_error_line(p.stderr)
    assert not (tmp_path / "o").exists()


def test_unknown_key_on_the_command_line_exits_2(tmp_path):
    p = cli("run", "rollout_spread", "--out", str(tmp_path / "o"), "episode=3")
    assert p.returncode == 2
    assert "did you mean 'episodes'" in one_error_line(p.stderr)
    assert not (tmp_path / "o").exists()


def test_in_process_errors_exit_2(tmp_path, capsys):
    bad_kind = tmp_path / "k.yaml"
    bad_kind.write_text("kind: swarmz\n")
    cases = [
        (["run", str(bad_kind)], "unknown experiment kind 'swarmz'"),
        (["run", "rollout_spread", "episodes=lots"], "expected int"),
        (["run", "rollout_spread", "policies=[random, greedy]"], "expected list[one of 'random', 'noop', 'saved']"),
        (["resume", str(tmp_path / "nowhere")], "does not exist"),
        (["resume", str(tmp_path)], "not a run directory"),
        (["gallery", str(tmp_path / "nowhere")], "not a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in one_error_line(err), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.yaml"]


def test_resume_of_finished_run_exits_2(tmp_path, capsys):
    rd = runner.run({"kind": "test_walk", "steps": 2}, out=tmp_path / "r", quiet=True)
    assert main(["resume", str(rd.path)]) == 2
    assert "already finished" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["resume", "--help"], ["list", "--help"], ["gallery", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_list_shows_configs_and_kinds(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "rollout_spread" in out and "[rollout]" in out and "tour" in out and "(intelligence)" in out


def test_run_then_gallery_from_the_command_line(tmp_path):
    p = cli("run", "rollout_spread", "--out", str(tmp_path / "r"), "--quiet", "--seed", "3", "episodes=2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"complete: {tmp_path / 'r'}")
    g = cli("gallery", str(tmp_path), "--out", str(tmp_path / "page.html"))
    assert g.returncode == 0, g.stderr
    assert (tmp_path / "page.html").is_file()
