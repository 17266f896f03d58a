"""Experiment kind ``federated``: Flower FedAvg on non-IID partitions, one curve per partitioning.

For each partitioning (IID, Dirichlet alpha, pathological k classes) the same ServerApp and
ClientApp run on Flower's simulation engine (or the deployment engine, ``engine:
deployment``); every round's train loss, centralized test accuracy, replies and failures go
to metrics.jsonl, round times to timings.jsonl. A centralized model trained on the union of
the clients' data is the reference line. Figures: test accuracy per round, and the label
distribution of every client.

Your own task: ``task: mypkg.task`` names a module with the functions of Flower's quickstart
``task.py`` (``load_model``, ``load_data``, ``train``, ``test``, and ``load_centralized_dataset``
for the test curve; see :data:`federated.task.TASK_FUNCTIONS`). The run is then one curve,
labelled ``task``, on that module's model and data; the built-in task's keys (``dataset``,
``hidden``, ``partitionings``, ``centralized_reference``) must be left out.
``aggregation: secure`` aggregates every round by secure aggregation instead.

Resume: the ServerApp checkpoints each round into ``checkpoints/fedavg-LABEL/``, plain and
secure runs alike; `resume` continues the interrupted partitioning from its last round and
skips finished ones.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from experiments import ExperimentConfig, RunContext, Section, register_kind
from federated.settings import FedSettings, field_of


def _task_path(task: str) -> str:
    # '' is the built-in task; anything else must import as a task module the kinds can plot.
    if task:
        check_task_for_kinds(task)
    return task


TaskPath = Annotated[str, AfterValidator(_task_path)]
"""A config field holding a user's task module by import path, checked before any run starts."""


class Partitioning(Section):
    """How the training split is divided among the clients (fields of FedSettings)."""

    partitioner: Literal["iid", "dirichlet", "pathological"] = field_of(FedSettings, "partitioner")
    alpha: float = field_of(FedSettings, "alpha")
    classes_per_client: int = field_of(FedSettings, "classes_per_client")

    @property
    def label(self) -> str:
        if self.partitioner == "dirichlet":
            return f"dirichlet-{self.alpha:g}"
        if self.partitioner == "pathological":
            return f"pathological-{self.classes_per_client}"
        return "iid"


def _default_partitionings() -> list[Partitioning]:
    return [Partitioning(partitioner="iid"), Partitioning(partitioner="dirichlet", alpha=0.5),
            Partitioning(partitioner="dirichlet", alpha=0.1),
            Partitioning(partitioner="pathological", classes_per_client=2)]


class FlowerRunConfig(ExperimentConfig):
    """The fields every Flower experiment kind has, taken from :class:`federated.settings.FedSettings`
    (its default, bounds and description; ``rounds`` is its ``num_server_rounds``, ``num_clients``
    its ``num_partitions``)."""

    num_clients: int = field_of(FedSettings, "num_partitions")
    rounds: int = field_of(FedSettings, "num_server_rounds")
    hidden: int = field_of(FedSettings, "hidden")
    lr: float = field_of(FedSettings, "lr")
    round_timeout: float = field_of(FedSettings, "round_timeout")
    task: TaskPath = field_of(FedSettings, "task")


class FedAvgConfig(FlowerRunConfig):
    """FedAvg with ``num_clients`` clients for ``rounds`` rounds on each partitioning.

    The Flower run's fields are FedSettings' own (see :class:`FlowerRunConfig`);
    :meth:`settings_for` builds the FedSettings each run's apps read.
    """

    dataset: Literal["digits", "breast_cancer"] = field_of(FedSettings, "dataset")
    partitionings: list[Partitioning] = Field(default_factory=_default_partitionings, min_length=1, max_length=20,
                                              description="One federated run per entry.")
    local_epochs: int = field_of(FedSettings, "local_epochs")
    batch_size: int = field_of(FedSettings, "batch_size")
    fraction_evaluate: float = field_of(FedSettings, "fraction_evaluate")
    min_replies: int = field_of(FedSettings, "min_replies")
    faults: str = field_of(FedSettings, "faults")
    engine: Literal["simulation", "deployment"] = Field("simulation", description="Flower engine.")
    num_cpus: int = Field(2, ge=1, le=256, description="CPUs for the simulation engine's Ray.")
    centralized_reference: bool = Field(True, description="Train on the union of the data as a reference "
                                                   "(built-in task only).")
    target_accuracy: float = Field(0.95, gt=0, le=1, description="Accuracy for the rounds-to-target count.")
    aggregation: Literal["plain", "secure"] = field_of(FedSettings, "aggregation")

    @model_validator(mode="after")
    def _check_settings(self) -> FedAvgConfig:
        if self.task:
            builtin = sorted({"dataset", "hidden", "partitionings", "centralized_reference"} & self.model_fields_set)
            if builtin:
                raise ValueError(f"{', '.join(builtin)} apply to the built-in task only; leave them out when "
                                 f"task={self.task!r} names your own module")
        # Every run's settings are built (and so checked) before any process starts.
        for p in self.runs():
            self.settings_for(p, "")
        labels = [p.label for p in self.partitionings]
        if len(set(labels)) != len(labels):
            raise ValueError(f"partitionings must be distinct, got {labels}")
        return self

    def runs(self) -> list[Partitioning | None]:
        """One entry per federated run: the partitionings, or None for a user's task."""
        return [None] if self.task else list(self.partitionings)

    def settings_for(self, p: Partitioning | None, checkpoint_dir: str) -> FedSettings:
        """The Flower run settings of partitioning ``p`` (None: the user's task)."""
        p = p or Partitioning()
        return FedSettings.create(
            num_server_rounds=self.rounds, num_partitions=self.num_clients, dataset=self.dataset,
            partitioner=p.partitioner, alpha=p.alpha, classes_per_client=p.classes_per_client,
            hidden=self.hidden, local_epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
            seed=self.seed, fraction_evaluate=self.fraction_evaluate, min_replies=self.min_replies,
            round_timeout=self.round_timeout, checkpoint_dir=checkpoint_dir, resume=True, faults=self.faults,
            task=self.task, aggregation=self.aggregation)


def check_task_for_kinds(task: str) -> None:
    """Checks a user's task module for the experiment kinds (which plot its test curve).

    Raises:
        ValueError: the module cannot be imported, lacks a task function, or has no
            ``load_centralized_dataset`` (the message names the module and what is missing).
    """
    from federated.task import CENTRALIZED, load_task_module

    module = load_task_module(task)
    if not callable(getattr(module, CENTRALIZED, None)):
        raise ValueError(f"module {task!r} lacks {CENTRALIZED}() -> the held-out test loader the experiment "
                         f"kinds evaluate the global model on each round")


def label_of(p: Partitioning | None) -> str:
    """The name of a run in metrics, checkpoints and headline keys."""
    return "task" if p is None else p.label


def centralized_curve(cfg: FedAvgConfig) -> list[float]:
    """Test accuracy after each of ``rounds * local_epochs`` epochs of training on the union."""
    import torch

    from federated.task import load_model, load_test_data, load_union_data, test, train

    torch.set_num_threads(1)
    model = load_model(cfg.dataset, cfg.hidden, cfg.seed)
    test_loader = load_test_data(cfg.dataset)
    accs = []
    for epoch in range(cfg.rounds * cfg.local_epochs):
        train(model, load_union_data(cfg.dataset, batch_size=cfg.batch_size, shuffle_seed=cfg.seed * 7919 + epoch),
              1, cfg.lr)
        accs.append(test(model, test_loader)[1])
    return accs


def rounds_to(history: list[dict[str, Any]], target: float) -> int | None:
    """The first round whose test accuracy reaches ``target`` (None if none does)."""
    return next((int(h["round"]) for h in history if h["test_acc"] >= target), None)


@register_kind("federated", FedAvgConfig, axis="training",
               description="Flower FedAvg on IID / Dirichlet / pathological partitions vs a centralized model")
def run_federated(cfg: FedAvgConfig, ctx: RunContext) -> dict[str, Any]:
    from federated.task import label_counts, partition_indices

    done: dict[str, Any] = dict(ctx.resume_state or {})
    reference = cfg.centralized_reference and not cfg.task
    if reference and "centralized" not in done:
        curve = centralized_curve(cfg)
        for epoch, acc in enumerate(curve, start=1):
            ctx.log(partitioning="centralized", epoch=epoch, test_acc=acc)
        done["centralized"] = curve
        ctx.save_checkpoint(done)
    for p in ctx.progress(cfg.runs(), description="federated"):
        label = label_of(p)
        if label in done:
            continue
        ckdir = ctx.path / "checkpoints" / f"fedavg-{label}"
        settings = cfg.settings_for(p, str(ckdir))

        def report(rec: dict[str, Any], label: str = label) -> None:
            ctx.info(f"{label} round {rec['round']}: test_acc {rec['test_acc']:.4f} "
                     f"replies {rec['replies']} failures {rec['failures']}")

        with task_importable(cfg.task):
            result = _run_engine(cfg, settings, report, ctx.dir.log_path)
        for rec in result["history"]:
            ctx.log(partitioning=label, **{k: v for k, v in rec.items() if k != "timing"})
            if rec["timing"]:
                ctx.log_timing(partitioning=label, round=rec["round"], **rec["timing"])
        done[label] = [{k: v for k, v in rec.items() if k != "timing"} for rec in result["history"]]
        ctx.save_checkpoint(done)

    counts = {} if cfg.task else {p.label: label_counts(cfg.dataset, partition_indices(
        cfg.dataset, cfg.num_clients, p.partitioner, p.alpha, p.classes_per_client, cfg.seed))
        for p in cfg.partitionings}
    _figures(cfg, ctx, done, counts)
    headline: dict[str, Any] = {}
    for label in map(label_of, cfg.runs()):
        hist = done[label]
        headline[f"{label}_final_acc"] = hist[-1]["test_acc"]
        headline[f"{label}_rounds_to_{round(cfg.target_accuracy * 100)}"] = rounds_to(hist, cfg.target_accuracy)
        headline[f"{label}_failures"] = sum(h["failures"] for h in hist)
    if reference:
        headline["centralized_final_acc"] = done["centralized"][-1]
    return headline


@contextlib.contextmanager
def task_importable(task: str) -> Iterator[None]:
    """Puts the folder ``task`` is imported from on PYTHONPATH while the engine runs.

    The deployment engine's processes (SuperLink, SuperNodes and the apps they start) inherit
    the environment, not this process's ``sys.path``; Flower's simulation engine hands its
    workers ``sys.path`` itself.
    """
    if not task:
        yield
        return
    from federated.task import task_module_root

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [task_module_root(task), before]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _run_engine(cfg: FedAvgConfig, settings: FedSettings, report: Any, log_file: Path) -> dict[str, Any]:
    # Flower's own log goes to the run's log.txt: the console shows the runner's lines only.
    if cfg.engine == "simulation":
        from federated.simulation import simulate

        return simulate(settings, num_cpus=cfg.num_cpus, on_round=report, log_file=log_file)
    from federated.deploy import deploy

    result = deploy(settings, timeout=cfg.round_timeout * (cfg.rounds + 2) + 120)
    for rec in result["history"]:
        report(rec)
    return result


def _figures(cfg: FedAvgConfig, ctx: RunContext, done: dict[str, Any], counts: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4))
    for label in map(label_of, cfg.runs()):
        hist = done[label]
        ax.plot([h["round"] for h in hist], [h["test_acc"] for h in hist], marker="o", ms=2.5,
                label=cfg.task if cfg.task else label)
    if "centralized" in done:
        curve = done["centralized"]
        epochs_per_round = cfg.local_epochs
        ax.plot(np.arange(1, len(curve) + 1) / epochs_per_round, curve, "k--", lw=1.2,
                label=f"centralized (final {curve[-1]:.3f})")
    ax.axhline(cfg.target_accuracy, color="grey", ls=":", lw=1, label=f"target {cfg.target_accuracy:.0%}")
    ax.set(xlabel="round (centralized: epochs / local epochs)", ylabel="test accuracy", ylim=(0, 1.02),
           title=f"FedAvg, {cfg.num_clients} clients on {cfg.task or cfg.dataset} ({cfg.engine} engine)")
    ax.legend(fontsize=8, loc="lower right")
    ctx.save_figure(fig, "accuracy_per_round")
    if not counts:  # a user's task partitions its own data
        return

    n = len(counts)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, (label, mat) in zip(axes[0], counts.items(), strict=True):
        bottom = np.zeros(mat.shape[0])
        cmap = plt.get_cmap("tab10" if mat.shape[1] <= 10 else "tab20")
        for c in range(mat.shape[1]):
            ax.bar(np.arange(mat.shape[0]), mat[:, c], bottom=bottom, color=cmap(c % cmap.N), width=0.85,
                   label=str(c))
            bottom += mat[:, c]
        ax.set(title=label, xlabel="client", ylabel="samples" if ax is axes[0][0] else None)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0][-1].legend(title="label", fontsize=6, title_fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(f"Label distribution per client ({cfg.dataset})", y=1.04)
    ctx.save_figure(fig, "label_distribution")

