"""The one settings model of a federated run: every field, its default and its bounds, once.

Flower hands the apps a flat ``run_config`` of scalars (``Context.run_config``): from
``[tool.flwr.app.config]`` in a project's ``pyproject.toml`` with ``flwr run``, merged with
``--run-config`` overrides, or from an experiment kind through :meth:`FedSettings.to_run_config`.
The ServerApp and the ClientApp read it once, with :meth:`FedSettings.from_run_config`, into
:class:`FedSettings`; secure aggregation's ``secagg-*`` keys go into its nested
:class:`federated.secure_aggregation.SecAggParams`. Reading and writing a run config belongs
to :class:`RunConfigModel`, which another Flower app's settings model can derive from too. The experiment kinds
(``experiments/federated.py``, ``experiments/secagg.py``) take their fields from these models
with :func:`field_of` instead of declaring their own defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from federated.secure_aggregation import SECAGG_PREFIX, SecAggParams, first_error
from federated.task import check_partition_args, load_task_module

FAULT_MODES = ("raise", "exit", "hang")


@dataclass(frozen=True)
class Fault:
    """One injected client fault: ``partition`` fails in ``round`` by ``mode``."""

    round: int
    partition: int
    mode: str


class RunConfigModel(BaseModel):
    """A settings model that Flower apps read from a flat run config.

    Each field's run-config key is its name with ``-`` for ``_``; a nested
    :class:`~federated.secure_aggregation.SecAggParams` field named ``secagg`` takes the
    ``secagg-*`` keys. Subclasses declare fields (default, bounds, description) and checks;
    reading, writing and one-line errors are here once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def _keys(cls) -> dict[str, str]:
        return {name.replace("_", "-"): name for name in cls.model_fields if name != "secagg"}

    def to_run_config(self) -> dict[str, Any]:
        """The flat Flower run config: hyphenated keys, scalar values, ``secagg-*`` included."""
        out = {key: getattr(self, name) for key, name in self._keys().items()}
        secagg = getattr(self, "secagg", None)
        return {**out, **(secagg.to_run_config() if secagg is not None else {})}

    @classmethod
    def from_run_config(cls, run_config: Any) -> Self:
        """Reads a Flower ``Context.run_config`` (or any flat mapping); missing keys take the defaults.

        Raises:
            ValueError: one line naming the first unknown key or bad value and what is allowed.
        """
        config = dict(run_config)
        known, nested = cls._keys(), "secagg" in cls.model_fields
        fields: dict[str, Any] = {}
        for key, value in config.items():
            if nested and key.startswith(SECAGG_PREFIX):
                continue
            if key not in known:
                more = ", and secagg-*" if nested else ""
                raise ValueError(f"unknown run-config key {key!r} (allowed: {', '.join(known)}{more})")
            fields[known[key]] = value
        if nested:
            fields["secagg"] = SecAggParams.from_run_config(config)
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise ValueError(first_error(exc, "")) from None

    @classmethod
    def create(cls, **fields: Any) -> Self:
        """``cls(**fields)`` whose validation error is one line naming the field.

        Raises:
            ValueError: the first bad field, its value and what is allowed.
        """
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise ValueError(first_error(exc)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated again."""
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).create(**{**current, **changes})


class FedSettings(RunConfigModel):
    """Everything a federated run needs; run-config keys are the field names with ``-`` for ``_``.

    Frozen and validated on construction: a FedSettings that exists is a run that can start.
    Use :meth:`replace` for a changed copy.
    """

    num_server_rounds: int = Field(3, ge=1, le=10_000, description="FedAvg rounds.")
    num_partitions: int = Field(10, ge=1, le=1000,
                                description="Clients; each SuperNode's partition-id is below this.")
    dataset: Literal["digits", "breast_cancer"] = Field("digits", description="scikit-learn dataset (built-in task).")
    partitioner: Literal["iid", "dirichlet", "pathological"] = Field(
        "dirichlet", description="iid, dirichlet (label skew by alpha) or pathological (k labels per client).")
    alpha: float = Field(0.5, gt=0, allow_inf_nan=False, description="Dirichlet concentration; smaller is more skewed.")
    classes_per_client: int = Field(2, ge=1, le=10, description="Labels per client (pathological only).")
    hidden: int = Field(64, ge=1, le=100_000, description="Hidden units of the built-in MLP.")
    local_epochs: int = Field(5, ge=1, le=1000, description="Local passes over each client's data per round.")
    batch_size: int = Field(16, ge=1, le=100_000, description="Client mini-batch size.")
    lr: float = Field(0.05, gt=0, allow_inf_nan=False, description="Client SGD learning rate.")
    seed: int = Field(0, ge=0, le=2**32 - 1,
                      description="Seed of the partition, the initial model and every client's batch order.")
    fraction_train: float = Field(1.0, gt=0, le=1, description="Fraction of nodes sampled for training each round.")
    fraction_evaluate: float = Field(0.0, ge=0, le=1,
                                     description="Fraction of nodes evaluating the global model on their own data "
                                                 "each round (0 skips federated evaluation; the server's held-out "
                                                 "test split is evaluated every round regardless).")
    min_replies: int = Field(1, ge=1, le=1000, description="Fewest successful training replies a round accepts; "
                                                           "below it the run stops with the last checkpoint intact.")
    round_timeout: float = Field(120.0, gt=0, le=86_400, allow_inf_nan=False,
                                 description="Seconds the server waits for replies in one round.")
    checkpoint_dir: str = Field("", description="Folder for the per-round server checkpoint ('' = none).")
    resume: bool = Field(False, description="Continue from the checkpoint in checkpoint_dir if there is one.")
    faults: str = Field("", description="Injected client faults 'ROUND:PARTITION:MODE,...' with MODE raise (the "
                                        "ClientApp raises), exit (its process exits) or hang (it sleeps past "
                                        "round_timeout); '' = none.")
    aggregation: Literal["plain", "secure"] = Field(
        "plain", description="plain: the server sees each update; secure: only their sum (secure aggregation, "
                             "parameters in secagg).")
    task: str = Field("", description="Import path of a user's task module (load_model, load_data, train, test); "
                                      "'' trains the built-in MLP on dataset.")
    secagg: SecAggParams = Field(default_factory=SecAggParams,
                                 description="Secure aggregation's parameters (run-config keys secagg-*).")

    @model_validator(mode="after")
    def _check_run(self) -> FedSettings:
        if self.min_replies > self.num_partitions:
            raise ValueError(f"min_replies must be <= num_partitions ({self.num_partitions}), got {self.min_replies}")
        check_partition_args(self.dataset, self.num_partitions, self.partitioner, self.alpha,
                             self.classes_per_client)
        self.fault_list()
        if self.aggregation == "secure" and self.num_partitions < 2:
            raise ValueError(f"num_partitions must be >= 2 for secure aggregation, got {self.num_partitions}")
        if self.task:
            load_task_module(self.task)
        return self

    def fault_list(self) -> list[Fault]:
        """The parsed ``faults`` string."""
        out = []
        for item in filter(None, (s.strip() for s in self.faults.split(","))):
            parts = item.split(":")
            if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or parts[2] not in FAULT_MODES:
                raise ValueError(
                    f"faults must be 'ROUND:PARTITION:MODE' items separated by commas with MODE one of "
                    f"{', '.join(FAULT_MODES)}, got {item!r}"
                )
            out.append(Fault(int(parts[0]), int(parts[1]), parts[2]))
        return out

    def fault_for(self, server_round: int, partition_id: int) -> str | None:
        """The fault mode injected into ``partition_id`` in ``server_round``, if any."""
        for f in self.fault_list():
            if f.round == server_round and f.partition == partition_id:
                return f.mode
        return None


def field_of(model: type[BaseModel], name: str) -> Any:
    """``model``'s field ``name`` (default, bounds, description) for use in another model.

    An experiment config declares ``lr: float = field_of(FedSettings, "lr")`` rather than
    repeating the default and the bounds, so the two can never disagree.
    """
    return copy.deepcopy(model.model_fields[name])
