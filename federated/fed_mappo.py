"""Federated CTDE: sites train MAPPO on their own environments, a Flower server averages the actors.

Each site is a Flower client (a SuperNode with ``partition-id`` = its site index). It trains
MAPPO -- decentralized actors, the central critic on ``env.state()`` -- on its own batch of
``mpe/simple_spread-v3`` worlds, which differ between sites (non-IID): site ``i`` of ``S``
rewards with ``local_ratio = ratio_low + (ratio_high - ratio_low) * i / (S - 1)`` and, with
``landmark_shift``, places its landmarks in its own region (site 0 down and left of the
agents' start square, the last site up and right), so a site alone never sees the landmark
layouts of the others. The agent count is the same everywhere, so every site's actor has
the same shapes.

Every round the server sends the global actor (and, with ``share_critic``, the critic and its
value normalization); each site trains ``local_steps`` environment steps from it and replies
with its weights and its environment-step count (``num-examples``), so the server's average is
weighted by environment steps. The site's experience -- observations, states, rewards,
returns -- never leaves it: only weights go out, and with ``aggregation = "secure"`` not even
those, only masked vectors whose sum the server learns (:mod:`federated.secure_mod`'s
``secure_agg_mod`` on the site, :class:`federated.SecureAggregation` on the server).

What a site keeps between rounds (its critic unless shared, its optimizer, value
normalization, environments and sampling generator) lives in its own folder (``site-dir`` in
its node config or the run config), one file per round, so a round recomputed after a
server restart starts from exactly the same site state: a killed run resumes to the same
result. The server checkpoints every round (:mod:`federated.checkpoint`'s npz format).

The server evaluates the global actor every round on its own simulator copies of every
site's environment (Flower's centralized evaluation; nothing of a site's run is involved) and
reports the pooled mean per-agent return.

``server_app`` and ``client_app`` are what ``flwr run`` loads on the deployment engine
(``federated.fed_mappo:server_app`` / ``:client_app``); :func:`simulate` runs them on the
simulation engine and :func:`deploy` on a local SuperLink with one SuperNode per site.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from pydantic import Field, ValidationError, field_validator, model_validator

from envs.files import atomic_write_bytes
from federated.arrays import from_numpy, to_numpy
from federated.checkpoint import load_server_checkpoint
from federated.secure_aggregation import SecAggParams, SecureAggregation, exchange, first_error
from federated.secure_mod import secure_agg_mod
from federated.settings import FedSettings, RunConfigModel, field_of
from federated.strategy import RobustFedAvg
from marl.mappo import MAPPO, MAPPOConfig

ENV = "mpe/simple_spread-v3"
ACTOR, CRITIC, NORM = "actor.", "critic.", "value_norm."


class FedMAPPOSettings(RunConfigModel):
    """One federated MAPPO run; run-config keys are the field names with ``-`` for ``_``.

    Read from and written to Flower's flat run config by :class:`federated.settings.RunConfigModel`
    (``secagg-*`` keys for the nested secure-aggregation parameters).
    """

    num_server_rounds: int = Field(3, ge=1, le=10_000, description="Federated rounds.")
    num_sites: int = Field(2, ge=1, le=1000, description="Sites (Flower clients), each with its own environments.")
    local_steps: int = Field(1600, ge=1, le=10**9,
                             description="Environment steps each site trains per round (rounded up to whole "
                                         "rollouts of num_envs * rollout_steps).")
    train: str = Field("{}", description="JSON object of MAPPO hyperparameters (marl.mappo.MAPPOConfig fields) "
                                         "every site uses; env, env_kwargs and total_steps are set by the run.")
    ratio_low: float = Field(0.0, ge=0, le=1, allow_inf_nan=False,
                             description="local_ratio of site 0's simple_spread (collision weight of the reward).")
    ratio_high: float = Field(1.0, ge=0, le=1, allow_inf_nan=False,
                              description="local_ratio of the last site; sites in between are spaced evenly.")
    landmark_shift: float = Field(0.0, ge=0, le=4, allow_inf_nan=False,
                                  description="Where each site places its landmarks: site 0 draws every landmark "
                                              "coordinate from [-1 - shift, 1 - shift], the last site from "
                                              "[-1 + shift, 1 + shift], sites in between evenly spaced (agents "
                                              "start in [-1, 1]^2 everywhere); 0 = mpe2's placement at every site.")
    share_critic: bool = Field(False, description="Average the central critics (and value normalizations) too; "
                                                  "otherwise each site keeps its own critic.")
    aggregation: Literal["plain", "secure"] = field_of(FedSettings, "aggregation")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the initial model, every site's run and the evaluation.")
    eval_episodes: int = Field(16, ge=0, le=100_000,
                               description="Greedy episodes per site environment in the server's evaluation every "
                                           "round (0: none).")
    eval_seed: int = Field(10_000, ge=0, le=2**31 - 1, description="Reset seed of the evaluation worlds.")
    round_timeout: float = Field(300.0, gt=0, le=86_400, allow_inf_nan=False,
                                 description="Seconds the server waits for the sites in one exchange.")
    checkpoint_dir: str = field_of(FedSettings, "checkpoint_dir")
    resume: bool = field_of(FedSettings, "resume")
    site_dir: str = Field("", description="Folder where each site keeps its own state between rounds (a node's "
                                          "node-config 'site-dir' wins); '' = sites restart from the global "
                                          "weights every round with fresh optimizers.")
    secagg: SecAggParams = field_of(FedSettings, "secagg")

    @field_validator("train")
    @classmethod
    def _train_is_mappo(cls, value: str) -> str:
        mappo_config(value)
        return value

    @model_validator(mode="after")
    def _check_run(self) -> FedMAPPOSettings:
        if self.aggregation == "secure" and self.num_sites < 2:
            raise ValueError(f"num_sites must be >= 2 for secure aggregation, got {self.num_sites}")
        return self

    @property
    def mappo(self) -> MAPPOConfig:
        """The sites' MAPPO hyperparameters (before the per-site environment)."""
        return mappo_config(self.train)

    @property
    def iterations(self) -> int:
        """MAPPO iterations (collect + update) a site runs per round."""
        cfg = self.mappo
        return -(-self.local_steps // (cfg.num_envs * cfg.rollout_steps))

    @property
    def steps_per_round(self) -> int:
        """Environment steps each site takes per round (its ``num-examples``)."""
        cfg = self.mappo
        return self.iterations * cfg.num_envs * cfg.rollout_steps

    def local_ratio(self, site: int) -> float:
        """Site ``site``'s ``local_ratio``: evenly spaced from ratio_low to ratio_high."""
        if self.num_sites == 1:
            return self.ratio_low
        return self.ratio_low + (self.ratio_high - self.ratio_low) * site / (self.num_sites - 1)

    def landmark_offset(self, site: int) -> float:
        """How far ``site``'s landmark range is moved from [-1, 1]: -shift at site 0 to +shift at the last."""
        if self.num_sites == 1:
            return -self.landmark_shift
        return self.landmark_shift * (2 * site / (self.num_sites - 1) - 1)

    def site_env(self, site: int) -> dict[str, Any]:
        """Keyword arguments of ``site``'s simple_spread (its reward weight and landmark placement)."""
        out: dict[str, Any] = {"local_ratio": self.local_ratio(site)}
        if self.landmark_shift:
            shift = self.landmark_offset(site)
            out["landmark_range"] = [-1.0 + shift, 1.0 + shift]
        return out

    def site_config(self, site: int) -> MAPPOConfig:
        """MAPPO's config at ``site``: its own environment; the learning rate anneals over the whole run."""
        cfg = self.mappo
        return cfg.model_copy(update={"env": ENV, "backend": "vec", "env_kwargs": self.site_env(site),
                                      "total_steps": self.num_server_rounds * self.steps_per_round})


def mappo_config(text: str) -> MAPPOConfig:
    """The MAPPOConfig that the JSON object ``text`` describes (the run sets env and budget).

    Raises:
        ValueError: not a JSON object, a field the run sets itself, or a bad MAPPO field (named).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"train must be a JSON object of MAPPO fields: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"train must be a JSON object of MAPPO fields, got {type(data).__name__}")
    fixed = sorted({"env", "env_kwargs", "backend", "total_steps", "teams", "workers"} & set(data))
    if fixed:
        raise ValueError(f"train.{fixed[0]} is set by the federated run (each site's simple_spread, the "
                         "budget from rounds and local_steps); leave it out")
    try:
        return MAPPOConfig(**data)
    except ValidationError as exc:
        raise ValueError(first_error(exc, "train.")) from None


# --------------------------------------------------------------------------------------------
# The shared weights: what leaves a site


def shared_weights(trainer: MAPPO, share_critic: bool) -> dict[str, np.ndarray]:
    """The arrays a site sends: the actor's, and with ``share_critic`` the critics' and value norms'."""
    out = {ACTOR + k: v.detach().cpu().numpy().copy() for k, v in trainer.actor.state_dict().items()}
    if share_critic:
        out.update({CRITIC + k: v.detach().cpu().numpy().copy() for k, v in trainer.critics.state_dict().items()})
        out.update({NORM + k: v.detach().cpu().numpy().copy() for k, v in trainer.value_norms.state_dict().items()})
    return out


def load_shared(trainer: MAPPO, weights: dict[str, np.ndarray]) -> None:
    """Puts the global arrays (as :func:`shared_weights` names them) into ``trainer``'s modules."""
    for prefix, module in ((ACTOR, trainer.actor), (CRITIC, trainer.critics), (NORM, trainer.value_norms)):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not part:
            continue
        own = module.state_dict()
        module.load_state_dict({k: torch.as_tensor(np.asarray(part[k]), dtype=own[k].dtype) for k in own})


def initial_weights(settings: FedMAPPOSettings) -> dict[str, np.ndarray]:
    """The global model of round 0: site 0's freshly initialized networks (seed ``settings.seed``)."""
    return shared_weights(MAPPO(settings.site_config(0).model_copy(update={"num_envs": 1, "num_minibatches": 1}),
                                settings.seed), settings.share_critic)


# --------------------------------------------------------------------------------------------
# One site's round


def _site_seed(settings: FedMAPPOSettings, site: int) -> int:
    return (settings.seed * 1000 + site) % 2**31


def train_site(settings: FedMAPPOSettings, site: int, server_round: int, weights: dict[str, np.ndarray],
               site_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Trains ``site``'s MAPPO for one round from the global ``weights``.

    The site's own state (critic unless shared, optimizer, value normalization, environments,
    generator) continues from the file it wrote after ``server_round - 1`` in ``site_dir``;
    without ``site_dir`` every round restarts from the global weights (environments reseeded
    by round).

    Returns:
        The site's shared weights after training and its metrics: ``num-examples`` (environment
        steps), ``train_return`` (mean per-agent return of its finished episodes) and
        ``train-seconds``.
    """
    t0 = time.perf_counter()
    cfg = settings.site_config(site)
    own = Path(site_dir) / f"site-{site}" if site_dir else None
    trainer = MAPPO(cfg, _site_seed(settings, site) + (0 if own else 7919 * server_round))
    before = own / f"round-{server_round - 1}.pt" if own else None
    if before is not None and before.exists():
        trainer.load_state_dict(torch.load(before, weights_only=True))
    trainer.update_index = (server_round - 1) * settings.iterations  # the learning-rate schedule spans the run
    load_shared(trainer, weights)
    returns = []
    for _ in range(settings.iterations):
        metrics = trainer.train_iteration()
        if metrics.get("train_return") is not None:
            returns.append(metrics["train_return"])
    if own is not None:
        buf = io.BytesIO()
        torch.save(trainer.state_dict(), buf)
        atomic_write_bytes(own / f"round-{server_round}.pt", buf.getvalue())
        stale = own / f"round-{server_round - 2}.pt"  # the round before stays for a recomputed round
        stale.unlink(missing_ok=True)
    out = {"num-examples": settings.steps_per_round, "train_return": float(np.mean(returns)) if returns else 0.0,
           "train-seconds": time.perf_counter() - t0}
    return shared_weights(trainer, settings.share_critic), out


# --------------------------------------------------------------------------------------------
# Evaluation on every site's environment (the server's own simulator copies)


@dataclass
class PooledEvaluator:
    """Greedy per-agent return of an actor on each site's environment, and their mean."""

    settings: FedMAPPOSettings
    trainers: list[MAPPO] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = max(self.settings.eval_episodes, 1)
        self.trainers = [MAPPO(self.settings.site_config(s).model_copy(update={"num_envs": n, "num_minibatches": 1}),
                               self.settings.seed) for s in range(self.settings.num_sites)]

    def __call__(self, weights: dict[str, np.ndarray]) -> dict[str, Any]:
        """``return`` (pooled mean) and ``site_returns`` of the actor in ``weights``."""
        from marl.evaluate import evaluate

        site_returns = []
        for trainer in self.trainers:
            load_shared(trainer, {k: v for k, v in weights.items() if k.startswith(ACTOR)})
            site_returns.append(float(evaluate(trainer.greedy_policy, trainer.env, self.settings.eval_seed)["return"]))
        return {"return": float(np.mean(site_returns)), "site_returns": site_returns}

    def save_policy(self, weights: dict[str, np.ndarray], directory: str | Path, env_steps: int) -> Path:
        """Saves the actor in ``weights`` as a MAPPO policy (site 0's environment) for ``agora play``."""
        trainer = self.trainers[0]
        load_shared(trainer, {k: v for k, v in weights.items() if k.startswith(ACTOR)})
        trainer.update_index = env_steps // trainer.batch_steps
        return trainer.save_policy(directory)


# --------------------------------------------------------------------------------------------
# The ClientApp: a site


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """A site's ClientApp (secure aggregation's mod included; plain messages pass through it).

    Args:
        overrides: Run-config keys that win over the context's (the simulation engine's
            Python API starts apps with an empty run config).
    """
    app = ClientApp(mods=[secure_agg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = FedMAPPOSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        site = int(context.node_config["partition-id"])
        site_dir = str(context.node_config.get("site-dir", "")) or settings.site_dir
        server_round = int(msg.content["config"]["server-round"])
        weights, metrics = train_site(settings, site, server_round, to_numpy(msg.content["arrays"]), site_dir)
        return Message(RecordDict({"arrays": from_numpy(weights), "metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


# --------------------------------------------------------------------------------------------
# The ServerApp: the round loop


def payload_bytes(content: RecordDict) -> int:
    """Bytes a message carries: array buffers, byte and string values, 8 per number."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
            continue
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in items)
    return total


class RecordingGrid:
    """A Grid that counts the bytes pushed and pulled through it and keeps what it pulled.

    The server's view of a round: every reply it received is in :attr:`received`, which is
    what a test inspects to see that no site experience reaches the server.
    """

    def __init__(self, grid: Grid, keep: bool = False) -> None:
        self.grid, self.keep = grid, keep
        self.bytes_out = self.bytes_in = 0
        self.received: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.bytes_out += sum(payload_bytes(m.content) for m in messages if m.has_content())
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        got = list(self.grid.pull_messages(message_ids))
        self.bytes_in += sum(payload_bytes(m.content) for m in got if m.has_content())
        if self.keep:
            self.received.extend(got)
        return got

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return exchange(self, list(messages), timeout or 3600.0)  # type: ignore[arg-type]


def make_strategy(settings: FedMAPPOSettings) -> Strategy:
    """Plain (:class:`RobustFedAvg`, replies summed in site order) or ``SecureAggregation(FedAvg)``."""
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_evaluate_nodes=0,
                  min_available_nodes=settings.num_sites, min_train_nodes=settings.num_sites)
    if settings.aggregation == "plain":
        return RobustFedAvg(min_replies=settings.num_sites, **common)
    return SecureAggregation(FedAvg(**common), settings.secagg, metrics=(), timeout=settings.round_timeout,
                             num_rounds=settings.num_server_rounds)


def run_fed_rounds(grid: Grid, settings: FedMAPPOSettings, on_round: Callable[[dict[str, Any]], None] | None = None,
                   *, strategy: Strategy | None = None) -> dict[str, Any]:
    """Runs ``settings.num_server_rounds`` federated MAPPO rounds on ``grid``.

    Returns:
        ``{"weights": the global arrays, "history": one record per round (round 0 first)}``;
        a record holds ``round``, ``env_steps`` (all sites together), ``return`` and
        ``site_returns`` (the server's evaluation), ``replies``, in secure runs
        ``error_bound``, and under ``timing`` ``round_seconds``, ``bytes_out``, ``bytes_in``.

    Raises:
        TooFewReplies: a round in which not every site replied (the checkpoint of the previous
            round is kept).
    """
    from federated.server_app import fedavg_rounds

    strategy = strategy or make_strategy(settings)
    evaluator = PooledEvaluator(settings) if settings.eval_episodes else None
    grid = grid if isinstance(grid, RecordingGrid) else RecordingGrid(grid)
    sent = {"out": grid.bytes_out, "in": grid.bytes_in}  # the byte counters at the last record

    def round_zero(weights: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"env_steps": 0, **(evaluator(weights) if evaluator else {}), "replies": 0, "timing": {}}

    def record(server_round: int, weights: dict[str, np.ndarray], new_arrays: Any, train_metrics: Any,
               tally: dict[str, Any], t0: float) -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        out = {"env_steps": server_round * settings.num_sites * settings.steps_per_round,
               **(evaluator(weights) if evaluator else {}), "replies": tally["replies"]}
        if settings.aggregation == "secure":
            out["error_bound"] = float(tally["secure"]["error_bound"])
        out["timing"] = {"round_seconds": seconds, "bytes_out": grid.bytes_out - sent["out"],
                         "bytes_in": grid.bytes_in - sent["in"]}
        sent["out"], sent["in"] = grid.bytes_out, grid.bytes_in
        return out

    # Every site in every round: a site's experience is its own, no other site stands in for it.
    return fedavg_rounds(grid, strategy, num_rounds=settings.num_server_rounds,  # type: ignore[arg-type]
                         min_replies=settings.num_sites, round_timeout=settings.round_timeout,
                         checkpoint_dir=settings.checkpoint_dir, resume=settings.resume,
                         initial=lambda: initial_weights(settings), round_zero=round_zero,
                         nodes=lambda server_round, start: settings.num_sites, record=record, on_round=on_round)


def make_server_app(overrides: dict[str, Any] | None = None, sink: list[Any] | None = None,
                    on_round: Callable[[dict[str, Any]], None] | None = None, *,
                    keep_replies: list[Message] | None = None) -> ServerApp:
    """The ServerApp; ``sink`` receives :func:`run_fed_rounds`' result (or its exception).

    Args:
        overrides: Run-config keys that win over the context's.
        sink: Where the result goes (same process).
        on_round: Called with each round's record.
        keep_replies: If given, every message the server received is appended to it.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = FedMAPPOSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        recording = RecordingGrid(grid, keep=keep_replies is not None)
        try:
            result: Any = run_fed_rounds(recording, settings, on_round)  # type: ignore[arg-type]
        except Exception as exc:
            if sink is not None:
                sink.append(exc)
            raise
        finally:
            if keep_replies is not None:
                keep_replies.extend(recording.received)
        if sink is not None:
            sink.append(result)

    return app


server_app = make_server_app()
client_app = make_client_app()


# --------------------------------------------------------------------------------------------
# Running it: simulation engine, deployment engine


def simulate(settings: FedMAPPOSettings, *, num_cpus: int = 2, on_round: Callable[[dict[str, Any]], None] | None = None,
             keep_replies: list[Message] | None = None, log_file: str | Path | None = None) -> dict[str, Any]:
    """Runs the federation on Flower's simulation engine (one virtual SuperNode per site)."""
    from federated.simulation import run_apps

    overrides = settings.to_run_config()
    sink: list[Any] = []
    return run_apps(make_server_app(overrides, sink, on_round, keep_replies=keep_replies), make_client_app(overrides),
                    settings.num_sites, sink, num_cpus=num_cpus, log_file=log_file)


def deploy(settings: FedMAPPOSettings, workdir: str | Path, *, timeout: float = 600.0) -> dict[str, Any]:
    """Runs the federation on the deployment engine: a local SuperLink, one SuperNode per site, ``flwr run``.

    ``settings.checkpoint_dir`` (a folder under ``workdir`` when empty) receives the server's
    checkpoints; the result is read from the last one.

    Raises:
        RuntimeError: the run stopped before its last round (with the end of Flower's log).
    """
    from federated.deploy import LocalFederation, write_project

    workdir = Path(workdir).resolve()
    if not settings.checkpoint_dir:
        settings = settings.model_copy(update={"checkpoint_dir": str(workdir / "checkpoints")})
    config = settings.to_run_config()
    project = write_project(workdir / "project", config)
    # The project writer names the FedAvg apps; this run's apps are the ones of this module.
    toml = project / "pyproject.toml"
    toml.write_text(toml.read_text().replace("federated.server_app:app", "federated.fed_mappo:server_app")
                    .replace("federated.client_app:app", "federated.fed_mappo:client_app"))
    with LocalFederation(settings.num_sites, workdir) as fed:
        # flwr's --run-config strips the quotes of a JSON value: the project declares train already.
        done = fed.submit({k: v for k, v in config.items() if k != "train"}, timeout, project=project)
        state = load_server_checkpoint(settings.checkpoint_dir)
        if done.returncode != 0 or state is None or state["round"] < settings.num_server_rounds:
            raise RuntimeError(f"deployment run stopped after round {0 if state is None else state['round']} "
                               f"(flwr run exit code {done.returncode}):\n{fed.tail('flwr-run', 3000)}")
    return {"weights": state["weights"], "history": state["history"]}
