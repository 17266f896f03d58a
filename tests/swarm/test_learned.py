"""A MAPPO actor trained on swarm/flock-v0 drives Mesa swarms at any N; the learned_flock kind."""

import numpy as np
import pytest
import torch

import swarm
from marl.mappo import MAPPO, MAPPOConfig
from swarm.learned import load_learned
from swarm.neighbours import minimum_image

TINY = dict(env="swarm/flock-v0", backend="parallel", num_envs=2, rollout_steps=5, total_steps=10,
            update_epochs=1, num_minibatches=1, hidden=16,
            env_kwargs={"n_agents": 6, "k": 3, "box": 24.5, "speed": 1.0, "max_cycles": 5})


def _saved(where, **changes):
    trainer = MAPPO(MAPPOConfig(**{**TINY, **changes}), seed=0)
    trainer.train_iteration()
    trainer.save_policy(where / "policy")
    return trainer, where


@pytest.fixture(scope="module")
def without_id(tmp_path_factory):
    """A (tiny) MAPPO run on flock-v0 whose actor reads no agent id, saved as a run directory."""
    return _saved(tmp_path_factory.mktemp("without_id"), agent_id=False)


@pytest.fixture(scope="module")
def with_id(tmp_path_factory):
    """The same run with the default actor (one-hot agent id)."""
    return _saved(tmp_path_factory.mktemp("with_id"))


def test_actor_without_agent_id_reads_the_observation_alone_and_the_default_is_unchanged(with_id, without_id):
    assert with_id[0].actor.in_features == with_id[0].obs_dim + 6  # the one-hot id of 6 agents
    assert without_id[0].actor.in_features == without_id[0].obs_dim == 12


def test_a_saved_mappo_actor_drives_the_mesa_model_at_1000_agents(without_id):
    trainer, where = without_id
    policy = load_learned(where)
    assert policy.perception.k == 3 and policy.perception.scale == 24.5 / 2
    assert policy.default_density == pytest.approx(6 / 24.5**2)
    model = swarm.SwarmModel(policy, 1000, seed=1)
    assert model.box == pytest.approx(np.sqrt(1000 / (6 / 24.5**2)))  # the training density
    for _ in range(2):
        pos, dirs = model.positions.copy(), model.directions.copy()
        obs = policy.perception(pos, dirs, model.box).observations
        # Reference: the trained actor's own greedy action, row by row through its torch network.
        with torch.no_grad():
            logits = trainer.actor.actors[0].net(torch.as_tensor(obs))
        turn = np.asarray(policy.motion.turns)[logits.argmax(-1).numpy()]
        model.step()
        expected = np.arctan2(dirs[:, 1], dirs[:, 0]) + turn
        np.testing.assert_allclose(model.directions, np.stack([np.cos(expected), np.sin(expected)], 1), atol=1e-12)
        np.testing.assert_allclose(minimum_image(model.positions - pos, model.box), model.directions, atol=1e-9)
    assert len(list(model.agents)) == 1000


def test_an_actor_tied_to_its_training_n_is_refused_by_name(with_id):
    with pytest.raises(ValueError, match="train with train.agent_id: false"):
        load_learned(with_id[1])


def test_the_solara_app_offers_the_learned_policy_beside_the_rules(without_id):
    from swarm.app import FlockApp, model_params
    from swarm.learned import LearnedPolicy

    assert model_params["rule"]["values"] == ["reynolds", "vicsek", "couzin", "learned"]
    app = FlockApp(rule="learned", n_agents=50, box=40.0, policy_dir=str(without_id[1]))
    assert isinstance(app.policy, LearnedPolicy) and app.perception.k == 3
    pos = app.positions.copy()
    app.step()
    np.testing.assert_allclose(np.hypot(*minimum_image(app.positions - pos, 40.0).T), 1.0, atol=1e-9)  # speed 1
    with pytest.raises(ValueError, match="policy_dir: the learned rule needs a run directory"):
        FlockApp(rule="learned", policy_dir=" ")


TINY_RUN = ["train.total_steps=20", "train.num_envs=2", "train.rollout_steps=5", "train.update_epochs=1",
            "train.num_minibatches=1", "train.hidden=16", "train.env_kwargs.max_cycles=5", "train.env_kwargs.n_agents=6", "eval_every=1",
            "eval_episodes=2", "checkpoint_every=1", "n_agents=[20,60]", "steps=6", "record_every=3", "seeds=2",
            "gif_n_agents=60", "frames=3"]


def test_learned_flock_trains_then_drives_swarms_with_figures_and_a_gif(tmp_path):
    from PIL import Image

    from experiments import runner

    rd = runner.run("learned_flock", out=tmp_path / "r", overrides=TINY_RUN, quiet=True)
    assert sorted(p.name for p in rd.figures()) == [
        "learned_flock.gif", "learned_flock_order.png", "learned_flock_snapshots.png", "learning_curve.png"]
    with Image.open(rd.figures_dir / "learned_flock.gif") as gif:
        assert gif.n_frames == 4  # steps 0, 2, 4, 6
    head = rd.read_summary()["headline"]
    swarm_lines = [m for m in rd.read_metrics() if "policy" in m]
    assert [(m["n_agents"], m["seed"], m["policy"], m["step"]) for m in swarm_lines[:4]] == [
        (20, 0, "learned", 0), (20, 0, "learned", 3), (20, 0, "learned", 6), (20, 0, "reynolds", 0)]
    assert len(swarm_lines) == 2 * 2 * 3 * 3  # sizes x seeds x policies x records
    for n in (20, 60):
        for name in ("learned", "reynolds", "random"):
            last = [[m for m in swarm_lines if (m["n_agents"], m["policy"], m["seed"]) == (n, name, s)][-1]
                    for s in (0, 1)]
            assert head[f"clusters_{name}_N{n}"] == pytest.approx((last[0]["clusters"] + last[1]["clusters"]) / 2)
            # window 0.25 of 3 records: the last one of each seed, averaged
            assert head[f"polarization_{name}_N{n}"] == pytest.approx(
                (last[0]["polarization"] + last[1]["polarization"]) / 2)
        gap = head[f"polarization_learned_N{n}"] - head[f"polarization_reynolds_N{n}"]
        assert head[f"learned_minus_reynolds_N{n}"] == pytest.approx(gap)
        assert head[f"learned_reaches_reynolds_N{n}"] == (gap >= -0.05)
    # The three policies start from the same swarm.
    first = {m["policy"]: m["polarization"] for m in swarm_lines if (m["n_agents"], m["seed"], m["step"]) == (20, 1, 0)}
    assert first["learned"] == first["reynolds"] == first["random"]
    assert (rd.path / "policy" / "policy.json").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("train.agent_id=true", "train.agent_id must be false"),
    ("train.env=mpe/simple_spread-v3", "train.env must be swarm/flock-v0"),
    ("n_agents=[1]", "config key 'n_agents.0' = 1 is invalid"),
    ("gif_n_agents=7", "gif_n_agents must be one of n_agents"),
    ("reynolds={vision: 0.0}", "vision must be a number in (0, inf)"),
    ("window=0", "config key 'window' = 0 is invalid"),
    # One env keyword changes alone (n_agents keeps its default 30), and the env's own check names it.
    ("train.env_kwargs.k=30", "k must be an integer in [1, 29], got 30"),
])
def test_bad_learned_flock_values_exit_2_naming_the_key(tmp_path, capsys, override, message):
    from experiments.cli import main

    assert main(["run", "learned_flock", "--out", str(tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
