"""The experiment runner: typed configs, run directories, experiment kinds, the gallery."""

from experiments.config import ExperimentConfig, Section
from experiments.errors import UserError
from experiments.kinds import AXES, KindSpec, all_kinds, get_kind, register_kind
from experiments.rundir import RunContext, RunDir

__all__ = [
    "AXES",
    "ExperimentConfig",
    "KindSpec",
    "RunContext",
    "RunDir",
    "Section",
    "UserError",
    "all_kinds",
    "get_kind",
    "register_kind",
]
