"""The Multi-Particle Environments of mpe2, registered under ``mpe/``: cooperative and competitive.

Competitive ones are registered with their teams (agent-name prefixes), so MAPPO trains one
learner per team and reports each team's return.

``envs.make("mpe/simple_spread-v3", N=3, local_ratio=0.5, max_cycles=25)`` is mpe2's own
``simple_spread_v3.parallel_env`` with the same keyword arguments; the version in the id is
mpe2's.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from envs.registry import register

COOPERATIVE = {
    "simple_spread_v3": "N agents cover N landmarks; shared reward is minus the distance to cover",
    "simple_reference_v3": "two agents, each told the landmark the other must reach",
    "simple_speaker_listener_v4": "a mute listener guided to a landmark by a static speaker",
    "simple_formation_v1": "agents arrange themselves in a circle around a landmark",
    "simple_line_v1": "agents arrange themselves on a line between two landmarks",
}


def _parallel_env(module: str, **kwargs: Any) -> Any:
    return importlib.import_module(f"mpe2.{module}").parallel_env(**kwargs)


for _module, _text in COOPERATIVE.items():
    _name, _, _version = _module.rpartition("_v")
    register(f"mpe/{_name}-v{_version}", partial(_parallel_env, _module), description=f"mpe2: {_text}")


# Competing teams, by agent-name prefix (mpe2 names adversaries ``adversary_K`` or
# ``leadadversary_0``; the others ``agent_K``; simple_crypto's ``eve_0`` against ``alice_0``/``bob_0``).
COMPETITIVE = {
    "simple_tag_v3": ("predators chase a faster prey", {"adversary": ["adversary_"], "agent": ["agent_"]}),
    "simple_adversary_v3": ("good agents hide the target landmark from an adversary",
                            {"adversary": ["adversary_"], "agent": ["agent_"]}),
    "simple_push_v3": ("an adversary pushes the agent off its landmark", {"adversary": ["adversary_"], "agent": ["agent_"]}),
    "simple_crypto_v3": ("alice and bob talk privately while eve listens", {"eve": ["eve_"], "alice_bob": ["alice_", "bob_"]}),
    "simple_world_comm_v3": ("a lead adversary and adversaries chase agents among forests",
                             {"adversary": ["adversary_", "leadadversary_"], "agent": ["agent_"]}),
}

for _module, (_text, _teams) in COMPETITIVE.items():
    _name, _, _version = _module.rpartition("_v")
    register(f"mpe/{_name}-v{_version}", partial(_parallel_env, _module), description=f"mpe2 (competitive): {_text}",
             teams=_teams)
