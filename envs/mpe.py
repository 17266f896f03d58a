"""The cooperative Multi-Particle Environments of mpe2, registered under ``mpe/``.

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
