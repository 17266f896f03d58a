"""The registry of experiment kinds. Each package adds its own without touching the runner.

A kind is a typed config model and a function that runs it::

    from experiments import ExperimentConfig, RunContext, register_kind

    class VicsekConfig(ExperimentConfig):
        noise: list[float] = [0.1, 1.0, 2.0]

    @register_kind("vicsek_transition", VicsekConfig, axis="intelligence",
                   description="Polarization vs noise: the Vicsek order-disorder transition")
    def run(cfg: VicsekConfig, ctx: RunContext) -> dict:
        ...
        return {"polarization_low_noise": 0.98}   # the headline numbers

Packages declare the module holding their kinds in ``pyproject.toml`` under the entry-point
group ``agora.experiments``; the registry imports those modules on first use.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiments.config import ExperimentConfig
from experiments.errors import UserError

# The six axes of distribution, in the order the gallery shows them.
AXES: dict[str, str] = {
    "data": "Data",
    "training": "Training",
    "model": "Model",
    "inference": "Inference",
    "cluster": "Cluster coordination",
    "intelligence": "Intelligence",
}

ENTRY_POINT_GROUP = "agora.experiments"


@dataclass(frozen=True)
class KindSpec:
    """One experiment kind.

    Args:
        name: What a config's ``kind:`` names.
        config: The pydantic model of its config (a subclass of ExperimentConfig).
        run: ``run(cfg, ctx) -> dict`` returning the headline numbers.
        axis: One of :data:`AXES`.
        description: One line for listings.
    """

    name: str
    config: type[ExperimentConfig]
    run: Callable[..., dict[str, Any]]
    axis: str
    description: str = ""


_KINDS: dict[str, KindSpec] = {}
_LOADED = False


def register_kind(
    name: str, config: type[ExperimentConfig], *, axis: str, description: str = ""
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator registering ``run(cfg, ctx)`` as the experiment kind ``name``."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} of kind {name!r} is not one of {', '.join(AXES)}")
    if not (isinstance(config, type) and issubclass(config, ExperimentConfig)):
        raise TypeError(f"config of kind {name!r} must subclass ExperimentConfig")

    def decorate(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in _KINDS and _KINDS[name].run is not fn:
            raise ValueError(f"experiment kind {name!r} is already registered by {_KINDS[name].run.__module__}")
        _KINDS[name] = KindSpec(name, config, fn, axis, description)
        return fn

    return decorate


def load_plugins() -> None:
    """Imports every module named under the ``agora.experiments`` entry points (once).

    A module of a package that this install leaves out is skipped; a module that exists but
    fails to import raises, so a broken plugin is never silently missing.
    """
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value)
        except ModuleNotFoundError as exc:
            if exc.name is None or not ep.value.startswith(exc.name):
                raise


def get_kind(name: Any) -> KindSpec:
    """The kind called ``name``; a UserError lists the allowed kinds."""
    load_plugins()
    if isinstance(name, str) and name in _KINDS:
        return _KINDS[name]
    allowed = sorted(_KINDS)
    close = difflib.get_close_matches(str(name), allowed, n=2) if isinstance(name, str) else []
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    what = "no experiment kind given (key 'kind')" if name is None else f"unknown experiment kind {name!r}"
    raise UserError(f"{what}{hint} (allowed: {', '.join(allowed)})")


def all_kinds() -> dict[str, KindSpec]:
    """Every registered kind, by name."""
    load_plugins()
    return dict(sorted(_KINDS.items()))
