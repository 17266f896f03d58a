"""MARL acts through the one Policy contract: the trainer's greedy policy, saved policies and the
baselines give exactly the returns they gave before the contract (measured at commit 1fd1ee6,
where MAPPO handed out its own greedy function and marl had its own BatchPolicy type)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import marl_toy_envs  # noqa: F401  (registers toy/mixed-v0)
import numpy as np
import pytest
import torch

import envs
from marl import load_policy
from marl.evaluate import baselines, evaluate
from marl.mappo import MAPPO, MAPPOConfig, make_batched_env

CASES = {
    "spread": ("mpe/simple_spread-v3", {}),
    "spread_continuous": ("mpe/simple_spread-v3", {"continuous_actions": True}),
    "mixed": ("toy/mixed-v0", {}),
}

# Printed by running this file as a script on the tree of commit 1fd1ee6 (before the contract).
BEFORE: dict[str, dict[str, Any]] = {
    "spread": {"greedy": -30.97586396932602, "saved_sampled": -24.17068624297778,
               "baselines": {"random": -22.84029723405838, "noop": -20.100263953208923,
                             "scripted": -13.984272919098538},
               "act": [{"agent_0": 3, "agent_1": 3, "agent_2": 4}] * 3},
    "spread_continuous": {"greedy": -20.303901505470275, "saved_sampled": -21.78540692329407,
                          "baselines": {"random": -21.75535536408424, "noop": -20.100263953208923,
                                        "scripted": -11.259816821229954},
                          "act": [{"agent_0": [0.4930075407028198, 0.5016791820526123, 0.5072627663612366,
                                               0.5018140077590942, 0.5048817992210388]}]},
    "mixed": {"greedy": -5.117364007234573, "saved_sampled": -5.123027011752129,
              "baselines": {"random": -7.1214985191822056, "noop": -3.18863063454628},
              "act": [{"picker_0": 0, "mover_0": [0.04745912924408913, 0.048028524965047836]},
                      {"picker_0": 1, "mover_0": [0.00047265831381082535, 0.0008839242509566247]},
                      {"picker_0": 0, "mover_0": [0.021588455885648727, 0.015254076570272446]}]},
}


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def measure(case: str, policy_dir: Path) -> dict[str, Any]:
    """Trains one tiny update, then scores the greedy, saved and baseline policies on 5 worlds."""
    env_id, kwargs = CASES[case]
    cfg = MAPPOConfig(env=env_id, env_kwargs=kwargs, backend="parallel", num_envs=4, rollout_steps=8,
                      total_steps=4 * 8 * 2, num_minibatches=1, update_epochs=1, hidden=16)
    trainer = MAPPO(cfg, seed=0)
    trainer.train_iteration()
    ev = make_batched_env(cfg, 5, 77)
    names = ("random", "noop", "scripted") if "spread" in env_id else ("random", "noop")
    out: dict[str, Any] = {"greedy": evaluate(trainer.greedy_policy, ev, seed=77)["return"],
                           "baselines": {k: v["return"] for k, v in baselines(ev, 77, names).items()}}
    trainer.save_policy(policy_dir)
    out["saved"] = evaluate(load_policy(policy_dir), ev, seed=77)["return"]
    out["saved_sampled"] = evaluate(load_policy(policy_dir, greedy=False, seed=3), ev, seed=77)["return"]
    ev.close()
    saved = load_policy(policy_dir)
    single = envs.make(env_id, **kwargs)
    obs, _ = single.reset(seed=4)
    out["act"] = []
    for _ in range(3):
        actions = saved.act(obs)
        out["act"].append({a: _plain(v) for a, v in actions.items()})
        obs, *_ = single.step(actions)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_policies_return_exactly_what_they_returned_before_the_contract(case: str, tmp_path: Path) -> None:
    got = measure(case, tmp_path / "policy")
    want = BEFORE[case]
    assert got["greedy"] == want["greedy"]  # bit for bit
    assert got["saved"] == want["greedy"]
    assert got["saved_sampled"] == want["saved_sampled"]
    assert got["baselines"] == want["baselines"]
    for step, want_step in zip(got["act"], want["act"], strict=False):
        assert {a: step[a] for a in want_step} == want_step


def test_the_marl_agents_are_agents_whose_policies_act(tmp_path: Path) -> None:
    # Prepare: a joint policy over a Discrete and a Box group.
    cfg = MAPPOConfig(env="toy/mixed-v0", backend="parallel", num_envs=2, rollout_steps=4, total_steps=8,
                      num_minibatches=1, update_epochs=1, hidden=8)
    trainer = MAPPO(cfg, seed=1)
    joint = trainer.greedy_policy
    obs = torch.randn(6, 2, trainer.obs_dim, generator=torch.Generator().manual_seed(0))
    # Execute: the joint action, and each group's agent acting on its own agents' rows.
    actions = joint(obs)
    by_agent = {a.id: a for a in joint.group_agents}
    assert all(isinstance(a, envs.Agent) for a in joint.group_agents)
    for i, g in enumerate(trainer.groups):
        rows = obs[:, list(g.agents)]
        own = by_agent[g.name].act(rows)
        # Assert: the joint action is every group agent's own action, in the agents' columns.
        if g.discrete:
            assert torch.equal(actions[:, list(g.agents), 0], own.float())
            assert own.dtype == torch.long and bool(((own >= 0) & (own < g.size)).all())
        else:
            assert torch.equal(actions[:, list(g.agents), : g.size], own)
            assert bool((own >= torch.tensor(g.low)).all() and (own <= torch.tensor(g.high)).all())
        # The group's actor, read directly, picks the same action (the reference).
        dist = trainer.actor.actors[i].distribution(rows[..., : g.obs_dim])
        ref = dist.logits.argmax(-1) if g.discrete else trainer.actor.actors[i].to_env(dist.mean)
        assert torch.equal(own, ref)


def test_a_plain_function_is_a_policy_for_the_evaluator_and_a_single_env() -> None:
    from marl.evaluate import noop_policy, play_episodes

    cfg = MAPPOConfig(num_envs=3, num_minibatches=1)
    ev = make_batched_env(cfg, 3, 5)
    # A function returning action 0 everywhere scores what the no-op baseline scores.
    zero = evaluate(lambda obs: torch.zeros(obs.shape[:2], dtype=torch.long), ev, seed=5)
    assert zero == evaluate(noop_policy(ev), ev, seed=5)
    ev.close()
    # On one ParallelEnv, the same function earns each agent exactly its summed reward of a
    # plain loop that sends action 0.
    env = envs.make("mpe/simple_spread-v3")
    got = play_episodes(env, lambda obs: np.zeros(obs.shape[:2], dtype=np.int64), episodes=2, seed=9)
    for ep in range(2):
        env.reset(seed=9 + ep)
        ref = dict.fromkeys(env.possible_agents, 0.0)
        while env.agents:
            _, rewards, _, _, _ = env.step(dict.fromkeys(env.agents, 0))
            for a, r in rewards.items():
                ref[a] += float(r)
        assert got[ep] == ref
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        play_episodes(env, noop_policy(env), episodes=0, seed=0)


if __name__ == "__main__":
    # Prints BEFORE for the tree this runs on: `PYTHONPATH=<tree> python tests/marl/test_policy_contract.py`.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({case: measure(case, Path(tmp) / case) for case in CASES}), file=sys.stdout)
