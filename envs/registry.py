"""A registry of environments with versioned ids ``family/name-vN``.

``register("mpe/simple_spread-v3", factory)`` adds one; ``make(id, **kwargs)`` builds one. A
changed behaviour gets a new version, so a config that names ``-v3`` keeps its meaning.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENV_ID = re.compile(r"^(?P<family>[a-z0-9_]+)/(?P<name>[A-Za-z0-9_]+)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class EnvSpec:
    """One registered environment.

    Args:
        id: ``family/name-vN``.
        factory: Called with the keyword arguments of :func:`make`; returns a ParallelEnv.
        description: One line for listings.
        defaults: Keyword arguments applied before the caller's.
        teams: Competing teams, each ``(name, agent-name prefixes)``; empty when all cooperate.
    """

    id: str
    factory: Callable[..., Any]
    description: str = ""
    defaults: tuple[tuple[str, Any], ...] = ()
    teams: tuple[tuple[str, tuple[str, ...]], ...] = ()


_REGISTRY: dict[str, EnvSpec] = {}
_VEC_REGISTRY: dict[str, Callable[..., Any]] = {}


def _check_id(env_id: str) -> None:
    if not isinstance(env_id, str) or not ENV_ID.match(env_id):
        raise ValueError(
            f"environment id {env_id!r} is not of the form 'family/name-vN' "
            "(lower-case family, e.g. 'mpe/simple_spread-v3')"
        )


def register(
    env_id: str,
    factory: Callable[..., Any],
    *,
    description: str = "",
    teams: dict[str, list[str]] | None = None,
    **defaults: Any,
) -> EnvSpec:
    """Registers ``factory`` under ``env_id``; warns when it replaces an existing entry.

    ``teams`` names competing teams by agent-name prefixes (``{"adversary": ["adversary_"],
    "good": ["agent_"]}``): trainers give each team its own learner.
    """
    _check_id(env_id)
    if env_id in _REGISTRY:
        warnings.warn(f"environment {env_id!r} was already registered; overriding it", stacklevel=2)
    team_spec = tuple((name, tuple(prefixes)) for name, prefixes in (teams or {}).items())
    spec = EnvSpec(env_id, factory, description, tuple(sorted(defaults.items())), team_spec)
    _REGISTRY[env_id] = spec
    return spec


def register_vec(env_id: str, factory: Callable[..., Any]) -> None:
    """Registers a batched implementation of an already-registered ``env_id`` for :func:`make_vec`."""
    _check_id(env_id)
    if env_id in _VEC_REGISTRY:
        warnings.warn(f"vectorized environment {env_id!r} was already registered; overriding it", stacklevel=2)
    _VEC_REGISTRY[env_id] = factory


def _unknown(env_id: str, known: list[str], what: str = "environment") -> KeyError:
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(sorted(known)) or "none"
    return KeyError(f"unknown {what} id {env_id!r}{hint} (registered: {listing})")


def spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` of ``env_id``; a KeyError names close matches."""
    _ensure_builtins()
    try:
        return _REGISTRY[env_id]
    except KeyError:
        raise _unknown(env_id, list(_REGISTRY)) from None


# Keyword arguments make() takes for itself, not the factory: image preprocessing (envs.image).
IMAGE_OPTIONS = ("image_pool", "grayscale")


def make(env_id: str, **kwargs: Any) -> Any:
    """Builds the environment registered as ``env_id`` with ``kwargs`` over its defaults.

    ``image_pool=k`` and ``grayscale=True`` are not passed to the factory: the environment's
    image observations and state are reduced to their grayscale and/or ``k x k`` block
    averages (:class:`envs.image.ImagePreprocess`).
    """
    s = spec(env_id)
    options = {k: kwargs.pop(k) for k in IMAGE_OPTIONS if k in kwargs}
    if options:
        from envs.image import ImagePreprocess

        # Checked before the environment is built (pygame windows, worker processes).
        ImagePreprocess.check_options(**options)
    env = s.factory(**{**dict(s.defaults), **kwargs})
    return ImagePreprocess(env, **options) if options else env


def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> Any:
    """Builds ``num_envs`` copies of ``env_id`` as one batched environment (where one exists)."""
    _ensure_builtins()
    if env_id not in _VEC_REGISTRY:
        raise _unknown(env_id, list(_VEC_REGISTRY), "vectorized environment")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    return _VEC_REGISTRY[env_id](num_envs=num_envs, **kwargs)


def registered() -> list[str]:
    """Every registered id, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def registered_vec() -> list[str]:
    """Every id that has a batched implementation, sorted."""
    _ensure_builtins()
    return sorted(_VEC_REGISTRY)


_BUILTINS_LOADED = False
# Modules that register environments when imported. A module missing from an install that
# leaves out its package is skipped; any other import error is raised.
_BUILTIN_MODULES = ("envs.mpe", "envs.vec_spread", "envs.pettingzoo_families", "swarm.env")


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
