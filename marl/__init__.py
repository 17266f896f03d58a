"""Centralized training with decentralized execution: MAPPO with a central critic, IPPO by a flag.

:func:`load_policy` rebuilds the policy a run saved (an :class:`envs.Policy`). It is imported
on first use, so ``import marl`` (and the CLI) stays free of torch until then.
"""

from typing import Any

__all__ = ["SavedPolicy", "load_policy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from marl import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'marl' has no attribute {name!r}")
