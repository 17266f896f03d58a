"""Experiment kinds of secure aggregation.

``secagg_protocol`` (pure protocol): sessions with dropouts at random rounds, for the complete
graph and for SecAgg+; the recovered sum is compared with the plain sum of the survivors, and
the bytes each client moves are measured. Figures: one client's input, its masked vector and the
unmasked sum next to the plain sum (the picture: the masks cancel), and bytes per client.

``secagg_fedavg`` (Flower): FedAvg on digits (or a user's task module), one run aggregated
securely and one plainly, through the same round loop (both checkpoint and resume); the two
accuracy curves must agree within the quantization error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from experiments import ExperimentConfig, RunContext, UserError, register_kind
from experiments.federated import FlowerRunConfig
from federated.secure_aggregation import SecAggParams
from federated.settings import FedSettings, field_of
from secure_agg.errors import SecAggError
from secure_agg.quantize import Quantization
from secure_agg.rounds import MASKED_INPUT, ROUNDS
from secure_agg.simulate import simulate
from secure_agg.wire import peek_signed


class ProtocolConfig(ExperimentConfig):
    """Secure sums of ``num_clients`` float vectors under dropouts, complete graph and SecAgg+."""

    num_clients: list[Annotated[int, Field(ge=2, le=1000)]] = Field([10, 20, 40], min_length=1, max_length=50,
                                                                    description="Session sizes to run (each 2..1000).")
    dim: int = Field(2000, gt=0, le=10_000_000, description="Entries per client vector.")
    threshold: float = Field(0.5, gt=0, le=1, description="t: the smallest integer above this fraction of the share holders "
                                                          "(clients refuse t at or below half of them).")
    dropout_rates: list[Annotated[float, Field(ge=0, le=1)]] = Field([0.0, 0.1, 0.3], min_length=1, max_length=50,
                                                                     description="Fractions of clients that drop (each in [0, 1]).")
    neighbours: int = Field(6, ge=0, description="SecAgg+ degree k (0 skips the SecAgg+ runs; even, below n).")
    clip: float = Field(1.0, gt=0, description="Quantization clipping range [-clip, clip].")
    bits: int = Field(32, ge=8, le=64, description="Sums live modulo 2**bits.")

    @model_validator(mode="after")
    def _sessions_fit(self) -> ProtocolConfig:
        for n in self.num_clients:
            if self.neighbours and (self.neighbours >= n or self.neighbours % 2):
                raise ValueError(f"neighbours = {self.neighbours} must be even and below every num_clients ({n})")
        # Every client's vector is held at once (float64, a few copies): keep it to ~1 GiB each.
        if max(self.num_clients) * self.dim > 2**27:
            raise ValueError(f"num_clients * dim = {max(self.num_clients) * self.dim} exceeds {2**27} entries "
                             "(memory); lower one of them")
        return self


def _threshold(fraction: float, holders: int) -> int:
    # Clients refuse t <= (their minimum) x holders, so take the smallest t strictly above.
    return min(holders, int(np.floor(fraction * holders)) + 1)


def _dropouts(rng: np.random.Generator, n: int, rate: float, t: int, holders: int) -> dict[str, list[int]]:
    # Never more than holders - t dropouts, so every secret keeps t holders (exactness holds).
    count = min(int(round(rate * n)), holders - t)
    ids = rng.choice(n, size=count, replace=False)
    rounds = rng.choice(len(ROUNDS), size=count)
    return {name: sorted(int(u) for u, r in zip(ids, rounds, strict=True) if r == i) for i, name in enumerate(ROUNDS)}


@register_kind("secagg_protocol", ProtocolConfig, axis="training",
               description="Bonawitz secure aggregation: exact sums through dropouts, bytes per client")
def run_protocol(cfg: ProtocolConfig, ctx: RunContext) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for n in cfg.num_clients:
        if n < 2:
            raise UserError(f"config key 'num_clients' holds {n}; every session needs at least 2 clients")
        if cfg.neighbours and (cfg.neighbours >= n or cfg.neighbours % 2):
            raise UserError(f"config key 'neighbours' = {cfg.neighbours} must be even and below every num_clients ({n})")
    quant = Quantization(cfg.clip, cfg.bits)
    done: dict[str, dict[str, Any]] = dict(ctx.resume_state or {})
    graphs = [0] + ([cfg.neighbours] if cfg.neighbours else [])
    cases = [(n, rate, k) for n in cfg.num_clients for rate in cfg.dropout_rates for k in graphs]
    for n, rate, k in ctx.progress(cases, description="secagg_protocol"):
        key = f"n={n} rate={rate} k={k}"
        case_rng = np.random.default_rng([cfg.seed, n, int(rate * 1000), k])
        if key in done:
            continue
        holders = n if k == 0 else k + 1
        t = _threshold(cfg.threshold, holders)
        vectors = [np.sin(np.linspace(0, 6, cfg.dim) + u) * 0.9 + case_rng.normal(0, 0.05, cfg.dim) for u in range(n)]
        drops = _dropouts(case_rng, n, rate, t, holders)
        try:
            result = simulate(vectors, t, dropouts=drops, neighbours=k or None, seed=cfg.seed, quantization=quant)
        except SecAggError as exc:
            raise UserError(f"case {key}: {exc}") from exc
        # The stated bound is for inputs inside the clipping range, so compare with clipped inputs.
        plain = np.sum([np.clip(vectors[u], -cfg.clip, cfg.clip) for u in result.survivors], axis=0)
        err = float(np.max(np.abs(result.aggregate - plain)))
        sent = np.mean([result.bytes_sent[u] for u in result.survivors])
        received = np.mean([result.bytes_received[u] for u in result.survivors])
        row = {"num_clients": n, "dropout_rate": rate, "neighbours": k, "threshold": t,
               "survivors": len(result.survivors), "dropped": len(result.dropped), "max_abs_error": err,
               "error_bound": result.error_bound, "within_bound": err <= result.error_bound,
               "bytes_sent_per_client": float(sent), "bytes_received_per_client": float(received)}
        ctx.log(**row)
        ctx.log_timing(case=key, server_seconds=result.server_seconds,
                       client_seconds_max=max(result.client_seconds.values()))
        done[key] = row
        ctx.save_checkpoint(done)

    # The picture: one client's input, what the server sees from it, and the recovered sum.
    n = cfg.num_clients[0]
    vectors = [np.sin(np.linspace(0, 6, cfg.dim) + u) * 0.9 for u in range(n)]
    seen: dict[Any, np.ndarray] = {}

    def capture(round_name: str, sender: Any, recipient: Any, data: bytes) -> bytes:
        if round_name == MASKED_INPUT and recipient == "server":
            seen[sender] = peek_signed(data)["masked"]
        return data

    result = simulate(vectors, _threshold(cfg.threshold, n), seed=cfg.seed, quantization=quant, tamper=capture)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(vectors[0], lw=1)
    axes[0].set(title="client 0's update (what it knows)", xlabel="entry")
    axes[1].plot(seen[0][:400], ".", ms=2)
    axes[1].set(title="client 0's masked vector (what the server sees)", xlabel="entry (first 400)",
                ylabel="integer mod 2^bits")
    axes[2].plot(np.sum(vectors, axis=0), lw=3, alpha=0.4, label="plain sum")
    axes[2].plot(result.aggregate, lw=1, ls="--", label="secure sum (masks cancelled)")
    axes[2].set(title=f"sum of {n} clients", xlabel="entry")
    axes[2].legend()
    fig.tight_layout()
    ctx.save_figure(fig, "masks_cancel")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k in graphs:
        rows = [r for r in done.values() if r["neighbours"] == k and r["dropout_rate"] == cfg.dropout_rates[0]]
        rows.sort(key=lambda r: r["num_clients"])
        ax.plot([r["num_clients"] for r in rows], [r["bytes_received_per_client"] / 1e3 for r in rows], marker="o",
                label="complete graph (Bonawitz)" if k == 0 else f"SecAgg+ k={k}")
    ax.set(xlabel="clients", ylabel="kB downloaded per client", title="Bytes per client")
    ax.legend()
    fig.tight_layout()
    ctx.save_figure(fig, "bytes_per_client")
    rows = list(done.values())
    return {"all_within_bound": all(r["within_bound"] for r in rows),
            "max_abs_error": max(r["max_abs_error"] for r in rows),
            "cases": len(rows)}


class SecureFedAvgConfig(FlowerRunConfig):
    """FedAvg with secure and with plain aggregation, one run each (Flower simulation).

    Both runs go through the same round loop (:func:`federated.server_app.run_rounds`), so each
    checkpoints every round and `resume` continues an interrupted one. ``task`` names a user's
    task module (see :mod:`experiments.federated`) instead of the built-in MLP on digits.
    The fields are those of the run's settings model (:class:`experiments.federated.FlowerRunConfig`)
    and of secure aggregation's (:class:`federated.secure_aggregation.SecAggParams`): their
    defaults and bounds live there.
    """

    partitioner: Literal["iid", "dirichlet", "pathological"] = field_of(FedSettings, "partitioner")
    alpha: float = field_of(FedSettings, "alpha")
    clip: float = field_of(SecAggParams, "clip")
    bits: int = field_of(SecAggParams, "bits")
    threshold: float = field_of(SecAggParams, "threshold")
    neighbours: int = field_of(SecAggParams, "neighbours")
    num_cpus: int = Field(2, ge=1, le=256, description="CPUs for Ray.")

    def settings(self, aggregation: str, checkpoint_dir: str) -> FedSettings:
        """The Flower run settings of the ``plain`` or the ``secure`` run."""
        # The experiment's seed also seeds the server's side of secure aggregation (sampling,
        # session ids); client secrets come from the clients' own OS in any case.
        secagg = SecAggParams(clip=self.clip, bits=self.bits, threshold=self.threshold, neighbours=self.neighbours,
                              seed=self.seed)
        return FedSettings.create(num_server_rounds=self.rounds, num_partitions=self.num_clients, dataset="digits",
                                  partitioner=self.partitioner, alpha=self.alpha, hidden=self.hidden, lr=self.lr,
                                  seed=self.seed, round_timeout=self.round_timeout, min_replies=2, task=self.task,
                                  aggregation=aggregation, checkpoint_dir=checkpoint_dir, resume=True, secagg=secagg)

    @model_validator(mode="after")
    def _graph_fits(self) -> SecureFedAvgConfig:
        if self.num_clients < 2:
            raise ValueError(f"num_clients must be >= 2 (secure aggregation sums at least two clients), "
                             f"got {self.num_clients}")
        if self.task:
            builtin = sorted({"partitioner", "alpha", "hidden"} & self.model_fields_set)
            if builtin:
                raise ValueError(f"{', '.join(builtin)} apply to the built-in task only; leave them out when "
                                 f"task={self.task!r} names your own module")
        self.settings("secure", "")  # every run setting checked before any process starts
        if self.neighbours and (self.neighbours >= self.num_clients or self.neighbours * self.num_clients % 2):
            raise ValueError(f"neighbours = {self.neighbours} must be 0, or below num_clients ({self.num_clients}) "
                             "with neighbours * num_clients even (a k-regular graph)")
        return self


@register_kind("secagg_fedavg", SecureFedAvgConfig, axis="training",
               description="Flower FedAvg on digits: secure aggregation vs plain, side by side")
def run_fedavg(cfg: SecureFedAvgConfig, ctx: RunContext) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.federated import task_importable
    from federated.simulation import simulate

    done: dict[str, Any] = dict(ctx.resume_state or {})
    for aggregation in ("plain", "secure"):
        if aggregation in done:
            continue

        def report(rec: dict[str, Any], aggregation: str = aggregation) -> None:
            ctx.info(f"{aggregation} round {rec['round']}: test_acc {rec['test_acc']:.4f}")

        settings = cfg.settings(aggregation, str(ctx.path / "checkpoints" / f"fedavg-{aggregation}"))
        with task_importable(cfg.task):
            result = simulate(settings, num_cpus=cfg.num_cpus, on_round=report, log_file=ctx.dir.log_path)
        for rec in result["history"]:
            if rec["timing"]:
                ctx.log_timing(aggregation=aggregation, round=rec["round"], **rec["timing"])
        done[aggregation] = [{k: v for k, v in rec.items() if k != "timing"} for rec in result["history"]]
        ctx.save_checkpoint(done)
    for p, s in zip(done["plain"], done["secure"], strict=True):
        ctx.log(round=s["round"], secure_test_acc=s["test_acc"], plain_test_acc=p["test_acc"],
                secure_train_loss=s["train_loss"], plain_train_loss=p["train_loss"],
                acc_diff=abs(s["test_acc"] - p["test_acc"]), survivors=s.get("survivors"),
                error_bound=s.get("error_bound"))
    plain, hist = done["plain"], done["secure"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    rounds = [r["round"] for r in hist]
    ax.plot(rounds, [r["test_acc"] for r in plain], lw=3, alpha=0.4, label="plain FedAvg (Flower)")
    ax.plot(rounds, [r["test_acc"] for r in hist], ls="--", marker="o", ms=3, label="secure aggregation")
    ax.set(xlabel="round", ylabel="test accuracy",
           title=f"FedAvg on {cfg.task or 'digits'}, {cfg.num_clients} clients")
    ax.legend()
    fig.tight_layout()
    ctx.save_figure(fig, "accuracy")
    return {"secure_final_acc": hist[-1]["test_acc"], "plain_final_acc": plain[-1]["test_acc"],
            "max_acc_diff": max(abs(s["test_acc"] - p["test_acc"]) for p, s in zip(plain, hist, strict=True))}
