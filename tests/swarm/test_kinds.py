"""The swarm experiment kinds: tiny runs, identical reruns, Ray equal to in-process, exit code 2."""

import json

import pytest

from experiments import runner

TINY_VICSEK = ["n_agents=[20,40]", "noise=[0.0,6.0]", "seeds=2", "steps=30", "transient=10",
               "densities=[1.0,4.0]", "density_n_agents=20"]
TINY_COUZIN = ["n_agents=20", "orientation_width=[0.0,2.0,14.0]", "seeds=1", "steps=40", "transient=20",
               "box=60.0", "sweep.parallel=false"]


def _metrics(rd):
    return rd.metrics_path.read_text()


def test_vicsek_transition_runs_in_process_and_reruns_identically(tmp_path):
    a = runner.run("vicsek_transition", out=tmp_path / "a", overrides=[*TINY_VICSEK, "sweep.parallel=false"], quiet=True)
    b = runner.run("vicsek_transition", out=tmp_path / "b", overrides=[*TINY_VICSEK, "sweep.parallel=false"], quiet=True)
    assert _metrics(a) == _metrics(b)
    summary = a.read_summary()
    assert summary["status"] == "complete"
    assert summary["headline"]["polarization_lowest_noise"] > 0.9  # eta = 0 from random headings, small N
    assert {p.name for p in a.figures()} == {"vicsek_noise.png", "vicsek_density.png"}
    lines = a.read_metrics()
    assert len(lines) == 2 * 2 * 2 + 2 * 2  # (N x noise x seeds) + (densities x seeds)


@pytest.mark.slow
def test_sweep_on_ray_equals_the_in_process_sweep_and_shuts_ray_down(tmp_path):
    import ray

    local = runner.run("vicsek_transition", out=tmp_path / "local", overrides=[*TINY_VICSEK, "sweep.parallel=false"], quiet=True)
    on_ray = runner.run("vicsek_transition", out=tmp_path / "ray", overrides=[*TINY_VICSEK, "sweep.parallel=true"], quiet=True)
    assert _metrics(local) == _metrics(on_ray)
    assert not ray.is_initialized()


def test_couzin_regimes_logs_order_and_regime_per_point(tmp_path):
    rd = runner.run("couzin_regimes", out=tmp_path / "c", overrides=TINY_COUZIN, quiet=True)
    lines = rd.read_metrics()
    assert [m["orientation_width"] for m in lines] == [0.0, 2.0, 14.0]
    assert all(m["regime"] in {"swarm", "torus", "parallel"} for m in lines)
    assert all(0.0 <= m["polarization"] <= 1.0 and 0.0 <= m["rotation"] <= 1.0 for m in lines)
    assert [p.name for p in rd.figures()] == ["couzin_regimes.png"]


def test_flock_animation_writes_a_snapshot_and_a_gif(tmp_path):
    from PIL import Image

    rd = runner.run("flock_animation", out=tmp_path / "f", overrides=["n_agents=30", "steps=10", "frames=5"], quiet=True)
    assert [p.name for p in rd.figures()] == ["flock.gif", "flock.png"]
    with Image.open(rd.figures_dir / "flock.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 6  # steps 0, 2, ..., 10
    lines = rd.read_metrics()
    assert [m["step"] for m in lines] == [0, 2, 4, 6, 8, 10]
    assert json.loads(rd.summary_path.read_text())["headline"]["rule"] == "reynolds"


@pytest.mark.parametrize(("config", "override", "message"), [
    ("vicsek_transition", "noise=[0.5,7.0]", "config key 'noise.1' = 7.0 is invalid"),
    ("vicsek_transition", "n_agents=[0]", "config key 'n_agents.0' = 0 is invalid"),
    ("vicsek_transition", "radius=-1", "config key 'radius' = -1 is invalid"),
    ("vicsek_transition", "transient=5000", "transient must be smaller than steps = 2000"),
    ("couzin_regimes", "orientation_width=[-1.0]", "config key 'orientation_width.0' = -1.0 is invalid"),
    ("flock_animation", "rule=boids", "config key 'rule' = 'boids' is invalid"),
    ("flock_animation", "params={noise: 9.0}", "noise must be a number in [0, 6.28319], got 9.0"),
    ("flock_animation", "params={vision: 3.0}", "unknown parameter(s) vision for rule 'vicsek'"),
])
def test_bad_config_values_exit_2_naming_the_key(tmp_path, capsys, config, override, message):
    from experiments.cli import main

    args = ["run", config, "--out", str(tmp_path / "o"), "rule=vicsek" if "params" in override else "seed=0", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # rejected before anything is written
