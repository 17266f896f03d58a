"""SecureFedAvg: Flower's Message-API FedAvg whose sum is computed by secure aggregation.

The four rounds of :mod:`secure_agg` travel as Flower messages through the Grid:

====================  ==========================  ===========================================
message type          server sends                client does
====================  ==========================  ===========================================
train.secagg_setup    global model + parameters   trains, weights and quantizes its update,
                                                  keeps it, replies with two public keys
train.secagg_share    rosters                     Shamir-shares its secrets, encrypted
train.secagg_mask     forwarded ciphertexts       replies with its masked vector
train.secagg_unmask   survivor / dropped lists    replies with the requested shares
====================  ==========================  ===========================================

The ServerApp therefore only ever holds public keys, ciphertexts, masked vectors and the final
sum. Weighting is done by the clients before masking: client k sends
``[w_k * params_k, w_k * loss_k]`` quantized, plus its example count ``n_k`` as an exact
integer, with ``w_k = n_k / max_weight``; the server divides the sum by ``sum(n_k) / max_weight``.
A client that fails or refuses in any round is a dropout; up to ``n - t`` are tolerated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from secure_agg import Quantization, SecAggError, SecAggServer

SETUP, SHARE, MASK, UNMASK = "secagg_setup", "secagg_share", "secagg_mask", "secagg_unmask"
PAYLOAD = "secagg"


@dataclass(frozen=True)
class SecAggParams:
    """Parameters of secure aggregation inside a Flower round (run-config keys ``secagg-*``).

    Attributes:
        clip: Weighted parameters are clipped to [-clip, clip] before quantization.
        bits: Sums live modulo 2**bits (1 to 64).
        max_weight: Upper bound on any client's number of examples (w_k = n_k / max_weight).
        threshold: Fraction of sampled clients needed to unmask (t = ceil(threshold * n)).
        neighbours: 0 pairs every client with every other; k > 0 uses SecAgg+ with k neighbours.
        seed: -1 draws every secret from the OS; otherwise secrets and session ids are
            derived from it (reproducible runs).
    """

    clip: float = 8.0
    bits: int = 32
    max_weight: int = 10_000
    threshold: float = 0.5
    neighbours: int = 0
    seed: int = -1

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"secagg-clip must be > 0, got {self.clip}")
        if not 1 <= self.bits <= 64:
            raise ValueError(f"secagg-bits must be in [1, 64], got {self.bits}")
        if self.max_weight < 1:
            raise ValueError(f"secagg-max-weight must be >= 1, got {self.max_weight}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"secagg-threshold must be in (0, 1], got {self.threshold}")
        if self.neighbours < 0:
            raise ValueError(f"secagg-neighbours must be >= 0, got {self.neighbours}")

    def threshold_for(self, n: int) -> int:
        """t for ``n`` sampled clients (at least 1, at most the share holders per client)."""
        holders = n if self.neighbours == 0 else min(n, self.neighbours + 1)
        return max(1, min(holders, math.ceil(self.threshold * holders)))

    def to_run_config(self) -> dict[str, Any]:
        """Flat ``secagg-*`` run-config keys."""
        return {"secagg-" + f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: Any) -> SecAggParams:
        """Reads the ``secagg-*`` keys of a run config (other keys are ignored)."""
        known = {"secagg-" + f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs = {}
        for key, value in dict(run_config).items():
            if key.startswith("secagg-"):
                if key not in known:
                    raise ValueError(f"unknown run-config key {key!r} (allowed: {', '.join(known)})")
                kind = float if known[key].type in (float, "float") else int
                kwargs[known[key].name] = kind(value)
        return cls(**kwargs)


def split_run_config(run_config: Any) -> tuple[dict[str, Any], SecAggParams]:
    """Separates the ``secagg-*`` keys from the rest of a run config."""
    rest = {k: v for k, v in dict(run_config).items() if not k.startswith("secagg-")}
    return rest, SecAggParams.from_run_config(run_config)


def flatten(weights: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenates arrays (in their key order) into one float64 vector."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in weights.values()])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cuts ``vector`` back into arrays shaped and typed like ``like``."""
    out, pos = {}, 0
    for name, ref in like.items():
        size = int(np.prod(ref.shape, dtype=np.int64))
        out[name] = vector[pos:pos + size].reshape(ref.shape).astype(ref.dtype)
        pos += size
    if pos != vector.size:
        raise ValueError(f"vector has {vector.size} entries, the model {pos}")
    return out


def client_vector(weights: dict[str, np.ndarray], num_examples: int, loss: float, params: SecAggParams,
                  num_clients: int) -> np.ndarray:
    """A client's input to secure aggregation: quantized weighted update and loss, then n_k.

    Raises:
        SecAggError: ``num_examples`` exceeds ``max_weight`` or cannot be summed without wrapping.
    """
    if not 0 < num_examples <= params.max_weight:
        raise SecAggError(f"a client has {num_examples} examples; secagg-max-weight ({params.max_weight}) must bound it")
    quantizer = Quantization(params.clip, params.bits).for_clients(num_clients)
    limit = ((1 << params.bits) - 1) // num_clients
    if num_examples > limit:
        raise SecAggError(f"{num_clients} clients with up to {num_examples} examples could wrap modulo 2**{params.bits}")
    w = num_examples / params.max_weight
    q = quantizer.quantize(np.concatenate([w * flatten(weights), [w * loss]]))
    return np.concatenate([q, np.array([num_examples], dtype=q.dtype)])


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Pushes ``messages`` and pulls their replies until all arrived or ``timeout`` passed.

    Like ``Grid.send_and_receive`` but polling from 2 ms up to 50 ms instead of at a fixed
    0.1 s (simulation) or 3 s (deployment): the protocol needs three more exchanges per
    round than FedAvg, and each one would otherwise wait out a full polling interval.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    pause = 0.002
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    return replies


@dataclass
class SecureRound:
    """What the server learned in one secure round (only aggregates and counts)."""

    sampled: int = 0
    survivors: int = 0
    dropped: int = 0
    threshold: int = 0
    total_examples: int = 0
    error_bound: float = 0.0
    server_bytes_in: int = 0
    server_bytes_out: int = 0
    discarded: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class SecureFedAvg(FedAvg):
    """FedAvg whose aggregate is computed with Bonawitz et al.'s secure aggregation.

    Args:
        params: Secure-aggregation parameters (see :class:`SecAggParams`).
        timeout: Seconds to wait for each of the four message rounds.
        **kwargs: Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
    """

    def __init__(self, params: SecAggParams | None = None, *, timeout: float = 600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params = params or SecAggParams()
        self.timeout = timeout
        self.last_round = SecureRound()
        self._grid: Grid | None = None
        self._server: SecAggServer | None = None
        self._nodes: list[int] = []
        self._like: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Logs nothing beyond FedAvg's summary (the parameters are in ``params``)."""
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Samples nodes like FedAvg and opens a secure session: the setup messages."""
        plain = list(super().configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._nodes = sorted(m.metadata.dst_node_id for m in plain)
        self._like = {k: v.numpy() for k, v in arrays.items()}
        n = len(self._nodes)
        if n < 2:
            raise SecAggError(f"secure aggregation needs at least 2 sampled clients, got {n}")
        dim = sum(v.size for v in self._like.values()) + 2
        seed = None if self.params.seed < 0 else f"{self.params.seed}-round-{server_round}"
        self._server = SecAggServer(list(range(n)), self.params.threshold_for(n), dim, bits=self.params.bits,
                                    neighbours=self.params.neighbours or None, seed=seed)
        self.last_round = SecureRound(sampled=n, threshold=self._server.threshold)
        requests = self._server.advertise_keys_requests()
        messages = []
        for pid, node in enumerate(self._nodes):
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "secagg-id": pid,
                                "secagg-clients": n,
                                **self.params.to_run_config()})
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg,
                                  PAYLOAD: ConfigRecord({"payload": requests[pid]})})
            messages.append(Message(content=content, message_type=f"train.{SETUP}", dst_node_id=node))
            self.last_round.server_bytes_out += len(requests[pid])
        return messages

    def _collect(self, replies: Iterable[Message]) -> dict[int, bytes]:
        index = {node: pid for pid, node in enumerate(self._nodes)}
        out = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error() or node not in index or PAYLOAD not in msg.content:
                continue
            data = msg.content[PAYLOAD]["payload"]
            if isinstance(data, bytes):
                out[index[node]] = data
                self.last_round.server_bytes_in += len(data)
        return out

    def _exchange(self, message_type: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        messages = []
        for pid, data in requests.items():
            self.last_round.server_bytes_out += len(data)
            messages.append(Message(content=RecordDict({PAYLOAD: ConfigRecord({"payload": data})}),
                                    message_type=f"train.{message_type}", dst_node_id=self._nodes[pid]))
        assert self._grid is not None
        return self._collect(exchange(self._grid, messages, self.timeout))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Runs the remaining three rounds through the Grid and returns the weighted average.

        Raises:
            SecAggError: Too many clients dropped (nothing is unmasked in that case).
        """
        server = self._server
        if server is None:
            raise SecAggError("aggregate_train called before configure_train")
        clock = self.last_round.seconds
        t0 = time.perf_counter()
        responses = self._collect(replies)
        responses = self._exchange(SHARE, server.share_keys_requests(responses))
        clock["share_keys"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        responses = self._exchange(MASK, server.masked_input_requests(responses))
        clock["masked_input"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        responses = self._exchange(UNMASK, server.unmasking_requests(responses))
        clock["unmasking"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = server.aggregate(responses)
        clock["unmask_compute"] = time.perf_counter() - t0
        self._server = None

        count = len(server.survivors)
        quantizer = Quantization(self.params.clip, self.params.bits).for_clients(self.last_round.sampled)
        summed = quantizer.dequantize(total[:-1], count)
        total_examples = int(total[-1])
        scale = self.params.max_weight / total_examples
        average = summed[:-1] * scale
        self.last_round.survivors, self.last_round.dropped = count, len(server.dropped)
        self.last_round.total_examples = total_examples
        self.last_round.error_bound = quantizer.error_bound(count) * scale
        self.last_round.discarded = dict(server.discarded)
        weights = unflatten(average, self._like)
        arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
        metrics = MetricRecord({"train_loss": float(summed[-1] * scale), "num-examples": total_examples,
                                "secagg-survivors": count, "secagg-dropped": len(server.dropped)})
        return arrays, metrics
