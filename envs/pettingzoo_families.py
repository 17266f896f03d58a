"""PettingZoo's SISL and Butterfly environments, registered under ``sisl/`` and ``butterfly/``.

``envs.make("sisl/pursuit-v5", **kwargs)`` is PettingZoo's own ``pursuit_v5.parallel_env``
with the same keyword arguments; the version in the id is PettingZoo's. They need extra
packages (SISL: pymunk and Box2D; Butterfly: pygame and pymunk; ``pip install agora[marl-envs]``):
the import happens when one is built, so the registry lists them either way and building one
without its package says which to install.

What MAPPO meets here that mpe2 does not have: agents that leave (knights_archers_zombies),
continuous bounded actions (multiwalker), image observations (cooperative_pong), and a state
that cannot be read after the episode ends (multiwalker).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from envs.registry import register

# id -> (PettingZoo module, pip packages it needs, description)
FAMILIES = {
    "sisl/pursuit-v5": ("pettingzoo.sisl.pursuit_v5", "pymunk", "8 pursuers corner 30 evaders on a grid (7x7x3 views)"),
    "sisl/multiwalker-v9": ("pettingzoo.sisl.multiwalker_v9", "box2d, pymunk",
                            "3 bipedal walkers carry a package (continuous actions in [-1, 1])"),
    "butterfly/knights_archers_zombies-v11": ("pettingzoo.butterfly.knights_archers_zombies_v11", "pygame, pymunk",
                                              "2 archers and 2 knights against zombies; agents die and leave"),
    "butterfly/cooperative_pong-v6": ("pettingzoo.butterfly.cooperative_pong_v6", "pygame",
                                      "two paddles keep a ball in play (RGB image observations)"),
}


# Keyword arguments an id gets unless the caller passes them. cooperative_pong's observations
# and state are its pygame screen, which PettingZoo draws only inside render(), and render()
# draws nothing without a render mode: with the default (None) every observation is black, and
# no policy can learn from it.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"butterfly/cooperative_pong-v6": {"render_mode": "rgb_array"}}


def _pettingzoo_env(module: str, packages: str, defaults: dict[str, Any], **kwargs: Any) -> Any:
    kwargs = {**defaults, **kwargs}
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{module} needs {packages} (missing: {exc.name}); install them with "
                         "`pip install 'agora[marl-envs]'`") from None
    return mod.parallel_env(**kwargs)


for _id, (_module, _packages, _text) in FAMILIES.items():
    register(_id, partial(_pettingzoo_env, _module, _packages, DEFAULT_KWARGS.get(_id, {})), description=f"PettingZoo: {_text}")
