"""The env registry, the common API, and check_env over every registered environment."""

import warnings

import numpy as np
import pytest

import envs
from envs.check import EnvCheckError, check_state


@pytest.mark.parametrize("env_id", envs.registered())
def test_every_registered_env_passes_check_env(env_id):
    envs.check_env(envs.make(env_id))


def test_mpe_cooperative_envs_are_registered():
    assert {"mpe/simple_spread-v3", "mpe/simple_reference-v3", "mpe/simple_speaker_listener-v4"} <= set(envs.registered())


def test_make_is_mpe2_itself_with_kwargs():
    from mpe2 import simple_spread_v3

    ours, ref = envs.make("mpe/simple_spread-v3", N=2, max_cycles=7), simple_spread_v3.parallel_env(N=2, max_cycles=7)
    assert type(ours) is type(ref)
    o1, _ = ours.reset(seed=3)
    o2, _ = ref.reset(seed=3)
    assert ours.possible_agents == ["agent_0", "agent_1"]
    for a in o1:
        np.testing.assert_array_equal(o1[a], o2[a])
    np.testing.assert_array_equal(ours.state(), ref.state())


def test_unknown_id_names_close_matches():
    with pytest.raises(KeyError, match=r"did you mean 'mpe/simple_spread-v3'"):
        envs.make("mpe/simple_sprad-v3")


@pytest.mark.parametrize("bad", ["simple_spread", "mpe/simple_spread", "MPE/x-v1", "mpe/x-vA", 3])
def test_malformed_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="family/name-vN"):
        envs.register(bad, lambda: None)


def test_override_warns_and_replaces():
    envs.register("test/dummy-v0", lambda: "first")
    with pytest.warns(UserWarning, match="already registered"):
        envs.register("test/dummy-v0", lambda k=1: ("second", k), k=5)
    assert envs.make("test/dummy-v0") == ("second", 5)
    assert envs.make("test/dummy-v0", k=7) == ("second", 7)
    envs.registry._REGISTRY.pop("test/dummy-v0")


def test_make_vec_rejects_unknown_and_bad_sizes():
    with pytest.raises(KeyError, match="unknown vectorized environment"):
        envs.make_vec("mpe/nope-v1", num_envs=2)
    for vec_id in envs.registered_vec():
        with pytest.raises(ValueError, match="num_envs"):
            envs.make_vec(vec_id, num_envs=0)


def test_check_state_catches_a_state_outside_its_space():
    env = envs.make("mpe/simple_spread-v3")
    env.state = lambda: np.zeros(3, dtype=np.float32)  # wrong shape: (3,) vs (54,)
    with pytest.raises(EnvCheckError, match="shape"):
        check_state(env)


def test_check_env_catches_a_broken_seed():
    class Unseeded:
        """simple_spread whose reset ignores the seed (the bug of PettingZoo #558)."""

        def __init__(self):
            self._env = envs.make("mpe/simple_spread-v3")

        def reset(self, seed=None, options=None):
            return self._env.reset(seed=None)

        def __getattr__(self, name):
            if name.startswith("_"):  # copy/pickle probe before __init__ ran
                raise AttributeError(name)
            return getattr(self._env, name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError):
            envs.check_env(Unseeded(), env_fn=Unseeded)


class Shard:
    """A user's data source: nothing inherited, only the DataSource methods."""

    def __init__(self, n):
        self.n = n

    def num_examples(self):
        return self.n

    def batches(self, seed):
        return iter(np.random.default_rng(seed).permutation(self.n))


class SGD:
    def fit(self, model, data, seed):
        model["seen"] = sorted(int(i) for i in data.batches(seed))
        return {"loss": 0.0}


def test_agent_finds_capabilities_by_kind_and_acts():
    agent = envs.Agent("a0", policy=lambda obs: obs.sum(axis=1), capabilities=[Shard(5)])
    agent.add(SGD())
    assert agent.has(envs.DataSource) and agent.has(envs.Learner) and not agent.has(envs.Communicator)
    model = {}
    agent.get(envs.Learner).fit(model, agent.get(envs.DataSource), seed=3)
    assert model["seen"] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(agent.act(np.ones((4, 3))), np.full(4, 3.0))
    with pytest.raises(ValueError, match="already has a DataSource"):
        agent.add(Shard(2))
    with pytest.raises(KeyError, match=r"has no Communicator \(it has: DataSource, Learner\)"):
        agent.get(envs.Communicator)
    with pytest.raises(TypeError, match="no capability kind"):
        agent.add(object())
    with pytest.raises(ValueError, match="has no policy"):
        envs.Agent("a1").act(np.ones((1, 1)))
