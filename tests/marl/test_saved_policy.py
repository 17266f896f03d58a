"""Saved policies: written as data with checkpoints and at the end, reloaded exactly, played and scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments import runner
from experiments.cli import main as cli
from marl import load_policy
from marl.evaluate import evaluate
from marl.mappo import MAPPOConfig, make_batched_env

TINY = ["train.num_envs=4", "train.rollout_steps=25", "train.total_steps=300", "train.num_minibatches=1", "train.update_epochs=1",
        "eval_every=2", "eval_episodes=6", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    runner.run("mappo_spread", out=out, overrides=TINY, quiet=True)
    return out


def test_policy_is_saved_as_data_with_checkpoints_and_at_the_end(run_dir: Path) -> None:
    for where in (run_dir / "policy", run_dir / "checkpoints" / "policy"):
        meta = json.loads((where / "policy.json").read_text())
        assert meta["format"] == "agora-policy-1" and meta["env"] == "mpe/simple_spread-v3"
        state = torch.load(where / "actor.pt", weights_only=True)  # tensors only: no code can run
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads((run_dir / "policy" / "policy.json").read_text())["update"] == 3
    assert json.loads((run_dir / "checkpoints" / "policy" / "policy.json").read_text())["update"] == 2


def test_reloaded_policy_reproduces_the_runs_greedy_return_exactly(run_dir: Path) -> None:
    last = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m.get("eval")][-1]
    cfg = MAPPOConfig(num_envs=6, num_minibatches=1)
    env = make_batched_env(cfg, 6, 10_000)
    result = evaluate(load_policy(run_dir), env, seed=10_000)
    assert result["return"] == last["return"]  # bit for bit, not approximately
    sampled = evaluate(load_policy(run_dir, greedy=False, seed=1), env, seed=10_000)
    assert sampled["return"] != last["return"]


def test_play_writes_a_gif_and_prints_returns(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gif = tmp_path / "play.gif"
    assert cli(["play", str(run_dir), "--episodes", "1", "--gif", str(gif), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "agent_0:" in out and "all:" in out and str(gif) in out
    assert "(26 frames)" in out  # the reset frame and one per step of a 25-step episode
    with Image.open(gif) as img:
        assert img.size == (700, 700) and img.n_frames > 10  # Pillow merges identical consecutive frames


def test_eval_reports_the_policy_beside_random(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["eval", str(run_dir), "--episodes", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    last = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m.get("eval")][-1]
    assert out["policy"]["return"] == last["return"] and out["policy"]["episodes"] == 6
    assert out["random"]["return"] < 0


def test_rollout_kind_plays_a_saved_policy(run_dir: Path, tmp_path: Path) -> None:
    rd = runner.run({"kind": "rollout", "env": "mpe/simple_spread-v3", "policies": ["random", "saved"],
                     "policy_dir": str(run_dir), "episodes": 2}, out=tmp_path / "roll", quiet=True)
    rows = [m for m in rd.read_metrics() if m.get("policy") == "saved"]
    assert len(rows) == 2


def test_play_of_a_directory_without_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["play", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no saved policy")


def _cli(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_unknown_env_id_exits_2_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _cli(["run", "mappo_spread", "--out", str(out), "train.env=mpe/simple_tag-v9", "train.backend=parallel"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "did you mean 'mpe/simple_tag-v3'" in done.stderr and done.stderr.count("\n") == 1
    assert not out.exists()


def test_a_users_env_module_is_imported_from_the_command_line(tmp_path: Path) -> None:
    pkg = tmp_path / "user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_envs.py").write_text(
        "import envs\nfrom functools import partial\nimport mpe2.simple_spread_v3 as s\n"
        "envs.register('mine/spread-v0', partial(s.parallel_env, N=2, max_cycles=10))\n")
    out = tmp_path / "run"
    args = ["run", "mappo_spread", "--out", str(out), "--import", "user_pkg.my_envs", "train.env=mine/spread-v0",
            "train.backend=parallel", "baselines=[random]", *TINY[:5], "train.total_steps=40", "eval_episodes=2",
            "train.rollout_steps=10"]
    without = _cli([a for a in args if a not in ("--import", "user_pkg.my_envs")], tmp_path, tmp_path)
    assert without.returncode == 2 and "not a registered environment" in without.stderr and not out.exists()
    done = _cli(args, tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "policy" / "policy.json").is_file()
    assert "user_pkg.my_envs" in (out / "config.yaml").read_text()
