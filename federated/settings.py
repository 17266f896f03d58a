"""The run configuration the ServerApp and ClientApp read, with its defaults (the only copy).

Flower hands the apps a flat ``run_config`` of scalars (``Context.run_config``): from
``[tool.flwr.app.config]`` in ``pyproject.toml`` when started with ``flwr run .``, merged with
``--run-config`` overrides, or from the experiment kind through :func:`FedSettings.to_run_config`.
``tests/federated/test_settings.py`` checks that pyproject's table equals these defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from federated.task import DATASETS, PARTITIONERS, check_partition_args, load_task_module

FAULT_MODES = ("raise", "exit", "hang")
AGGREGATIONS = ("plain", "secure")
SECAGG_PREFIX = "secagg-"  # run-config keys of secure aggregation's own parameters


@dataclass(frozen=True)
class Fault:
    """One injected client fault: ``partition`` fails in ``round`` by ``mode``."""

    round: int
    partition: int
    mode: str


@dataclass(frozen=True)
class FedSettings:
    """Everything a federated run needs, as flat run-config keys (``_`` becomes ``-``).

    Attributes:
        num_server_rounds: FedAvg rounds.
        num_partitions: Clients; each SuperNode's ``partition-id`` is below this.
        dataset: ``digits`` or ``breast_cancer``.
        partitioner: ``iid``, ``dirichlet`` or ``pathological``.
        alpha: Dirichlet concentration (``dirichlet`` only).
        classes_per_client: Labels per client (``pathological`` only).
        hidden: Hidden units of the MLP.
        local_epochs: Local passes over each client's data per round.
        batch_size: Client mini-batch size.
        lr: Client SGD learning rate.
        seed: Seed of the partition, the initial model and every client's batch order.
        fraction_train: Fraction of connected nodes sampled for training each round.
        fraction_evaluate: Fraction of nodes asked to evaluate the global model on their own
            data each round (0 skips federated evaluation).
        min_replies: Fewest successful training replies a round accepts; below it the run
            stops with the last checkpoint intact.
        round_timeout: Seconds the server waits for replies in one round.
        checkpoint_dir: Folder for the per-round server checkpoint ('' = none).
        resume: Continue from the checkpoint in ``checkpoint_dir`` if there is one.
        faults: Injected faults, ``"ROUND:PARTITION:MODE,..."`` with MODE one of
            ``raise`` (the ClientApp raises), ``exit`` (its process exits), ``hang``
            (it sleeps past ``round_timeout``). '' = none.
        aggregation: ``plain`` (the server sees each update) or ``secure`` (it sees only the
            sum, through secure aggregation; its parameters are the ``secagg-*`` keys).
        task: Import path of a user's task module with ``load_model``, ``load_data``,
            ``train`` and ``test`` (see :data:`federated.task.TASK_FUNCTIONS`); '' trains
            the built-in MLP on ``dataset``, and ``dataset``, ``partitioner``, ``alpha``,
            ``classes_per_client`` and ``hidden`` apply to it only.
    """

    num_server_rounds: int = 3
    num_partitions: int = 10
    dataset: str = "digits"
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    hidden: int = 64
    local_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.05
    seed: int = 0
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_replies: int = 1
    round_timeout: float = 120.0
    checkpoint_dir: str = ""
    resume: bool = False
    faults: str = ""
    aggregation: str = "plain"
    task: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and its allowed values."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.partitioner not in PARTITIONERS:
            raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, got {self.partitioner!r}")
        for name in ("num_server_rounds", "num_partitions", "hidden", "local_epochs", "batch_size", "min_replies"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ValueError(f"fraction_evaluate must be in [0, 1], got {self.fraction_evaluate}")
        if not self.round_timeout > 0:
            raise ValueError(f"round_timeout must be > 0, got {self.round_timeout}")
        if self.min_replies > self.num_partitions:
            raise ValueError(f"min_replies must be <= num_partitions ({self.num_partitions}), got {self.min_replies}")
        check_partition_args(self.dataset, self.num_partitions, self.partitioner, self.alpha,
                             self.classes_per_client)
        self.fault_list()
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.aggregation == "secure" and self.num_partitions < 2:
            raise ValueError(f"num_partitions must be >= 2 for secure aggregation, got {self.num_partitions}")
        if self.task:
            load_task_module(self.task)

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

    def to_run_config(self) -> dict[str, Any]:
        """The flat Flower run config (hyphenated keys, scalar values)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: Any) -> FedSettings:
        """Reads a Flower ``Context.run_config``; missing keys take the defaults above.

        Raises:
            ValueError: for an unknown key or a bad value.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in dict(run_config).items():
            if key not in known:
                raise ValueError(f"unknown run-config key {key!r} (allowed: {', '.join(known)})")
            f = known[key]
            kwargs[f.name] = _coerce(f, value)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> FedSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    # Flower's TOML and `--run-config` parsing gives ints where floats are meant (alpha=1).
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[f.type]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"run-config key {f.name.replace('_', '-')!r} must be {kind.__name__}, got {value!r}")
    return value


def split_settings(run_config: Any) -> tuple[FedSettings, dict[str, Any]]:
    """The FedSettings of a run config, and its secure-aggregation (``secagg-*``) keys apart.

    Raises:
        ValueError: for an unknown key or a bad value (the ``secagg-*`` keys are checked by
            whoever reads them).
    """
    config = dict(run_config)
    secagg = {k: v for k, v in config.items() if k.startswith(SECAGG_PREFIX)}
    return FedSettings.from_run_config({k: v for k, v in config.items() if k not in secagg}), secagg
