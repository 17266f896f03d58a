"""A hostile user's inputs: each exits 2 with one line on stderr, no traceback, nothing written.

The table runs in-process through the CLI's ``main`` (seconds for all of it); a handful run as
real subprocesses of ``python -m experiments`` to check what a shell sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

# (config, overrides, a piece of the message). Every override is a value a user could type.
BAD: list[tuple[str, list[str], str]] = [
    # values the models let through before and the run then choked on
    ("gang_scheduling", ["arrival_rates=[.nan]"], "arrival_rates.0"),
    ("gang_scheduling", ["mean_duration=.inf"], "mean_duration"),
    ("gang_scheduling", ["cross_rack_slowdown=.nan"], "cross_rack_slowdown"),
    ("gang_scheduling", ["arrival_rates=[]"], "arrival_rates"),
    ("gang_scheduling", ["worker_choices=[1000]"], "gang sizes"),
    ("gang_scheduling", ["jobs=10000000"], "jobs"),
    ("paged_kv_sharegpt", ["gen_max_prompt=100000"], "gen_max_prompt"),
    ("paged_kv_sharegpt", ["max_seq_len=1"], "max_seq_len"),
    ("paged_kv_sharegpt", ["block_sizes=[0]"], "block_sizes"),
    ("paged_kv_sharegpt", ["budget_sequences=100000", "max_seq_len=1000000"], "budget_sequences * max_seq_len"),
    ("paged_kv_sharegpt", ["workload=lmsys"], "workload"),
    ("secagg_protocol", ["num_clients=[1000000000000]"], "num_clients.0"),
    ("secagg_protocol", ["num_clients=[1]"], "num_clients.0"),
    ("secagg_protocol", ["dropout_rates=[-0.1]"], "dropout_rates.0"),
    ("secagg_protocol", ["dropout_rates=[1.5]"], "dropout_rates.0"),
    ("secagg_protocol", ["dropout_rates=[.nan]"], "dropout_rates.0"),
    ("secagg_protocol", ["neighbours=6", "num_clients=[4]"], "neighbours"),
    ("secagg_protocol", ["neighbours=3"], "neighbours"),
    ("secagg_protocol", ["dim=10000000", "num_clients=[1000]"], "num_clients * dim"),
    ("secagg_protocol", ["clip=.inf"], "clip"),
    ("secagg_fedavg", ["neighbours=5"], "neighbours"),
    ("secagg_fedavg", ["num_clients=1"], "num_clients"),
    ("rollout_spread", ["env_kwargs.N=0"], "env_kwargs.N"),
    ("rollout_spread", ["env_kwargs.N=-2"], "env_kwargs.N"),
    ("rollout_spread", ["env_kwargs.N=1e12"], "env_kwargs.N"),
    ("rollout_spread", ["env_kwargs.N=1000000000000"], "env_kwargs.N"),
    ("rollout_spread", ["env_kwargs.bogus=1"], "bogus"),
    ("rollout_spread", ["env_kwargs.local_ratio=.nan"], "local_ratio"),
    ("rollout_spread", ["env_kwargs.render_mode=human"], "render_mode"),
    ("rollout_spread", ["env=mpe/simple_sprad-v3"], "did you mean 'mpe/simple_spread-v3'"),
    ("rollout_spread", ["env=swarm/flock-v0", "env_kwargs.n_agents=1"], "n_agents"),
    ("rollout_spread", ["episodes=0"], "episodes"),
    ("rollout_spread", ["--seed", "-1"], "seed"),
    ("rollout_spread", ["seed=99999999999"], "seed"),
    ("rollout_spread", ["seed=.nan"], "seed"),
    ("mappo_spread", ["train.lr=.inf"], "train.lr"),
    ("mappo_spread", ["train.device=tpu"], "train.device"),
    ("mappo_spread", ["train.env_kwargs.N=0"], "train.env_kwargs.N"),
    ("mappo_spread", ["train.env=mpe/nope-v1"], "train.env"),
    ("mappo_spread", ["train.gamma=1.5"], "train.gamma"),
    ("mappo_spread", ["train.num_envs=65536", "train.rollout_steps=100000"], "num_envs * rollout_steps"),
    ("mappo_spread", ["baselines=[oracle]"], "baselines"),
    ("fedavg_digits", ["partitionings=[]"], "partitionings"),
    ("fedavg_digits", ["lr=.nan"], "lr"),
    ("fedavg_digits", ["num_clients=100000"], "num_clients"),
    ("fedavg_digits", ["min_replies=50", "num_clients=5"], "min_replies"),
    ("fedavg_digits", ["partitionings=[{partitioner: dirichlet, alpha: .inf}]"], "alpha"),
    ("fedavg_digits", ["round_timeout=.inf"], "round_timeout"),
    ("vicsek_transition", ["speed=.inf"], "speed"),
    ("vicsek_transition", ["n_agents=[0]"], "n_agents.0"),
    ("vicsek_transition", ["n_agents=[100000000]"], "n_agents.0"),
    ("vicsek_transition", ["transient=5000", "steps=100"], "transient"),
    ("couzin_regimes", ["dt=.nan"], "dt"),
    ("flock_animation", ["params.speed=.nan"], "speed"),
    ("flock_animation", ["frames=100000000"], "frames"),
    ("moe_balance", ["alphas=[.nan]"], "alphas.0"),
    ("moe_balance", ["alphas=[-1]"], "alphas"),
    ("moe_balance", ["num_experts=64", "d_model=8192", "d_ff=32768"], "num_experts * d_model"),
    ("ps_straggler", ["lr=.inf"], "lr"),
    ("ps_straggler", ["num_servers=4", "dim=2"], "num_servers"),
    ("ps_straggler", ["straggler_delay_s=.nan"], "straggler_delay_s"),
    ("ring_allreduce", ["world_sizes=[1]"], "world size"),
    ("ring_allreduce", ["sizes=[10000000000]"], "size"),
    ("zero_memory", ["widths=[100000, 100000]"], "width"),
    ("scaling_dp", ["counts=[8]", "global_batch=8", "widths=[0, 1]"], "widths"),
    ("scaling_dp", ["lr=.inf"], "lr"),
    ("shuffle_wordcount", ["num_partitions=0"], "num_partitions"),
    ("funnel_pydoc", ["pool_size=100000000"], "pool_size"),
    ("funnel_pydoc", ["candidates=[1]", "k=10"], "candidates"),
    ("gang_ray", ["gang_size=1000"], "gang"),
    ("gang_ray", ["timeout_s=.inf"], "timeout_s"),
    # the command line and the config file itself
    ("rollout_spread", ["episodes"], "unrecognized arguments"),
    ("rollout_spread", ["=3"], "key=value"),
    ("rollout_spread", ["--episodes=3"], "unrecognized arguments"),
    ("rollout_spread", ["episodes.x=3"], "episodes"),
    ("no_such_config", [], "not found"),
]


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.mark.parametrize(("config", "overrides", "message"), BAD, ids=[f"{c}:{' '.join(o)}" for c, o, _ in BAD])
def test_bad_value_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            config: str, overrides: list[str], message: str) -> None:
    out = tmp_path / "run"
    argv = ["run", config, "--out", str(out), "--quiet", *overrides]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = _lines(err)
    assert len(lines) == 1 or (lines[0].startswith("usage:") and len(lines) == 2), err
    assert message.lower() in lines[-1].lower(), lines[-1]
    assert len(lines[-1]) < 1200, "the error must stay a short line"
    assert "config key ''" not in lines[-1], "a whole-config check must name its fields, not key ''"
    assert not out.exists(), "a run directory was created for a bad input"
    assert not Path("runs").exists() or not any(Path("runs").glob(f"{config}-*")), "a default run directory was created"


def _bad_files(tmp_path: Path) -> list[tuple[Path, str]]:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    bomb = tmp_path / "bomb.yaml"
    # The "billion laughs" of YAML: nine levels of nine aliases each.
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("kind: rollout\n" + "\n".join(lines) + "\nenv_kwargs: {N: *a9}\n")
    loop = tmp_path / "loop.yaml"
    loop.write_text("kind: rollout\nenv_kwargs: &x {N: *x}\n")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kind: rollout\nepisodes: [1\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("kind: rollout\n" + "# padding\n" * 200_000)
    no_kind = tmp_path / "nokind.yaml"
    no_kind.write_text("episodes: 3\n")
    return [(binary, "not UTF-8"), (bomb, "aliases"), (loop, "refers to itself"), (not_mapping, "mapping"), (bad_yaml, "not valid YAML"),
            (huge, "larger than"), (no_kind, "no experiment kind")]


def _bad_tours(tmp_path: Path) -> list[tuple[Path, str]]:
    bad_tour = tmp_path / "tour.yaml"
    bad_tour.write_text("runs:\n  - config: rollout_spread\n  - config: rollout_sprad\n")
    tour_bad_value = tmp_path / "tour2.yaml"
    tour_bad_value.write_text("runs:\n  - config: rollout_spread\n    overrides: {episodes: 0}\n")
    tour_twice = tmp_path / "tour3.yaml"
    tour_twice.write_text("runs:\n  - config: rollout_spread\n  - config: rollout_spread\n")
    unknown = tmp_path / "tour4.yaml"
    unknown.write_text("runs:\n  - config: rollout_spread\nrunz: 1\n")
    empty = tmp_path / "tour5.yaml"
    empty.write_text("runs: []\n")
    return [(bad_tour, "runs.1"), (tour_bad_value, "runs.0"), (tour_twice, "used twice"), (unknown, "'runz'"),
            (empty, "'runs'")]


def test_bad_tours_exit_2_with_one_short_line_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, message in _bad_tours(tmp_path):
        out = tmp_path / f"tour-{path.stem}"
        assert main(["tour", str(path), "--out", str(out), "--quiet"]) == 2, path
        err = capsys.readouterr().err
        lines = _lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert message in lines[0] and len(lines[0]) < 1200, (path.name, lines[0][:300])
        assert not out.exists()


def test_bad_config_files_exit_2_with_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, message in _bad_files(tmp_path):
        out = tmp_path / f"run-{path.stem}"
        assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2, path
        err = capsys.readouterr().err
        lines = _lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert message in lines[0] and len(lines[0]) < 1200, (path.name, lines[0][:300])
        assert not out.exists()


def test_bad_out_paths_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me too")
    cases = [(a_file, "not a directory"), (Path("/dev/null"), "/dev"), (Path("/proc/agora-run"), "/proc"),
             (a_file / "sub", "not a directory"), (busy, "not empty")]
    # An unwritable --out: test_an_unwritable_out_exits_2 (as an unprivileged user).
    for out, message in cases:
        assert main(["run", "rollout_spread", "--out", str(out), "--quiet", "episodes=1"]) == 2, out
        lines = _lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (out, lines)
    assert a_file.read_text() == "keep me" and [p.name for p in busy.iterdir()] == ["x"]


def test_an_unwritable_out_exits_2(tmp_path: Path) -> None:
    """A folder the user may not write to. Root may write to any folder on a writable file
    system, so under root the folder is a read-only tmpfs mounted in a private mount namespace."""
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    cmd = [sys.executable, "-m", "experiments", "run", "rollout_spread", "--out", str(locked / "run"), "--quiet",
           "episodes=1"]
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        assert unshare is not None, "root needs unshare (util-linux) to mount a read-only folder"
        quoted = " ".join(f"'{c}'" for c in cmd)
        cmd = [unshare, "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs '{locked}' || exit 99; exec {quoted}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 99, f"no private read-only mount: {proc.stderr.strip()[:200]}"
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "is not writable" in lines[0], proc.stderr
    assert list(locked.iterdir()) == []


def test_gallery_out_a_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import runner

    runner.run({"kind": "test_walk", "steps": 2}, out=tmp_path / "r", quiet=True)
    (tmp_path / "pages").mkdir()
    for out, message in ((tmp_path / "pages", "is a directory"), (Path("/proc/page.html"), "/proc")):
        assert main(["gallery", str(tmp_path / "r"), "--out", str(out)]) == 2
        lines = _lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], lines
    assert list((tmp_path / "pages").iterdir()) == []


def _cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


@pytest.mark.parametrize("args", [
    ["run", "gang_scheduling", "arrival_rates=[.nan]"],
    ["run", "paged_kv_sharegpt", "gen_max_prompt=100000"],
    ["run", "secagg_protocol", "num_clients=[1000000000000]"],
    ["run", "rollout_spread", "--seed", "-1"],
])
def test_bad_input_in_a_real_process(tmp_path: Path, args: list[str]) -> None:
    p = _cli(*args, "--out", str(tmp_path / "o"), "--quiet", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(_lines(p.stderr)) == 1, p.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_list_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    p = subprocess.run(f"{sys.executable} -m experiments list | head -1", shell=True, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdout.startswith("configs")
    assert "BrokenPipe" not in p.stderr and "Traceback" not in p.stderr, p.stderr
