"""SecureFedAvg: Flower's Message-API FedAvg whose sum is computed by secure aggregation.

The four rounds of :mod:`secure_agg` travel as Flower messages through the Grid. A session's
first two rounds (keys and shares) need no model, so they are pipelined: they ride on the
previous FedAvg round's messages, and a steady-state round costs two message exchanges
instead of four:

=====================  ==============================  =======================================
message type           server sends                    client does
=====================  ==============================  =======================================
train.secagg_mask      global model, forwarded         trains, weights and quantizes its
                       ciphertexts of session r;       update, replies with the masked vector;
                       ``next``: session r+1's         ``next``: two fresh public keys
                       parameters
train.secagg_unmask    survivor / dropped lists;       replies with the requested shares;
                       ``next``: session r+1's roster  ``next``: its shares for session r+1,
                                                       encrypted
=====================  ==============================  =======================================

Round 1, and any round whose sampled clients differ from those that completed the pre-opened
session's key and share rounds (a client failed, or one joined), first opens a fresh session
with two bootstrap exchanges (``train.secagg_setup``: keys; ``train.secagg_share``: shares).
Every session has its own fresh keys, secrets and session id, exactly as in Bonawitz et al.;
only the time at which its first two rounds run changes.

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
PAYLOAD = "secagg"  # the RecordDict key of the protocol's ConfigRecord, which holds:
THIS = "payload"  # this session's message
NEXT = "next"  # the next session's message, riding along


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
    # [w * params, w * loss] in one float64 buffer (this runs on the full model every round).
    sizes = [np.size(v) for v in weights.values()]
    x = np.empty(sum(sizes) + 1, dtype=np.float64)
    pos = 0
    for v, size in zip(weights.values(), sizes, strict=True):
        np.multiply(np.asarray(v).ravel(), w, out=x[pos:pos + size], dtype=np.float64)
        pos += size
    x[-1] = w * loss
    q = quantizer.quantize(x)
    return np.concatenate([q, np.array([num_examples], dtype=q.dtype)])


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Pushes ``messages`` and pulls their replies until all arrived or ``timeout`` passed.

    Like ``Grid.send_and_receive`` but polling from 1 ms up to 10 ms instead of at a fixed
    0.1 s (simulation) or 3 s (deployment): secure aggregation needs at least one more
    exchange per round than FedAvg, and each would otherwise wait out a polling interval.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    pause = 0.001
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
    return replies


@dataclass
class SecureRound:
    """What the server learned in one secure round (only aggregates and counts).

    ``pipelined`` says whether the round used a session whose keys and shares were exchanged
    during the previous round (two exchanges) or opened a fresh one (four).
    """

    sampled: int = 0
    survivors: int = 0
    dropped: int = 0
    threshold: int = 0
    total_examples: int = 0
    error_bound: float = 0.0
    server_bytes_in: int = 0
    server_bytes_out: int = 0
    pipelined: bool = False
    discarded: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Session:
    """The server side of one secure-aggregation session and the nodes it was opened for.

    Client ids inside the session are positions in ``nodes`` (sorted node ids).
    """

    server: SecAggServer
    nodes: list[int]
    server_round: int
    mask_requests: dict[int, bytes] = field(default_factory=dict)


class SecureFedAvg(FedAvg):
    """FedAvg whose aggregate is computed with Bonawitz et al.'s secure aggregation.

    Args:
        params: Secure-aggregation parameters (see :class:`SecAggParams`).
        timeout: Seconds to wait for each message exchange.
        num_rounds: Rounds the run will have; the last one opens no next session. Set by
            :meth:`start`; drivers that call ``configure_train`` themselves set it too. None
            (unknown) opens a next session after every round.
        **kwargs: Passed to :class:`flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes).
            Sessions are pipelined only with ``fraction_train=1.0`` (every node, every round);
            with sampling every round opens its own session.
    """

    def __init__(self, params: SecAggParams | None = None, *, timeout: float = 600.0,
                 num_rounds: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params = params or SecAggParams()
        self.timeout = timeout
        self.num_rounds = num_rounds
        self.last_round = SecureRound()
        self._grid: Grid | None = None
        self._current: _Session | None = None
        self._next: _Session | None = None
        self._like: dict[str, np.ndarray] = {}

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, *args: Any, **kwargs: Any) -> Any:
        """Flower's round loop; records ``num_rounds`` so the last round opens no next session."""
        self.num_rounds = num_rounds
        return super().start(grid, initial_arrays, num_rounds, *args, **kwargs)

    def summary(self) -> None:
        """Logs nothing beyond FedAvg's summary (the parameters are in ``params``)."""
        super().summary()

    def _open(self, nodes: list[int], server_round: int) -> _Session:
        n = len(nodes)
        if n < 2:
            raise SecAggError(f"secure aggregation needs at least 2 sampled clients, got {n}")
        dim = sum(v.size for v in self._like.values()) + 2
        seed = None if self.params.seed < 0 else f"{self.params.seed}-round-{server_round}"
        server = SecAggServer(list(range(n)), self.params.threshold_for(n), dim, bits=self.params.bits,
                              neighbours=self.params.neighbours or None, seed=seed)
        return _Session(server, nodes, server_round)

    def _session_config(self, session: _Session) -> dict[str, Any]:
        return {"server-round": session.server_round, "secagg-clients": len(session.nodes),
                **self.params.to_run_config()}

    def _bootstrap(self, nodes: list[int], server_round: int) -> _Session:
        """Opens a fresh session and runs its keys and shares rounds (two exchanges)."""
        session = self._open(nodes, server_round)
        t0 = time.perf_counter()
        setup = [self._message(session, pid, SETUP, {THIS: data}, config={"secagg-id": pid})
                 for pid, data in session.server.advertise_keys_requests().items()]
        replies = self._exchange(session, setup)
        shares = self._exchange(session, [self._message(session, pid, SHARE, {THIS: data}) for pid, data in
                                          session.server.share_keys_requests(replies[THIS]).items()])
        session.mask_requests = session.server.masked_input_requests(shares[THIS])
        self.last_round.seconds["bootstrap"] = time.perf_counter() - t0
        return session

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Samples nodes like FedAvg; returns the messages that carry the model and the masking request.

        Uses the session pre-opened during the previous round when its clients are exactly the
        sampled ones; otherwise first opens a fresh session (two exchanges through ``grid``).
        When another round follows, the messages also open the next session.
        """
        plain = list(super().configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._like = {k: v.numpy() for k, v in arrays.items()}
        nodes = sorted(m.metadata.dst_node_id for m in plain)
        self.last_round = SecureRound(sampled=len(nodes))
        session, self._next = self._next, None
        if session is not None and [session.nodes[pid] for pid in sorted(session.mask_requests)] == nodes:
            self.last_round.pipelined = True
        else:
            session = self._bootstrap(nodes, server_round)
        self._current = session
        self.last_round.threshold = session.server.threshold
        # Open the next session on the same nodes: its keys ride on this round's messages.
        pipeline = self.fraction_train == 1.0 and (self.num_rounds is None or server_round < self.num_rounds)
        nxt = self._open(nodes, server_round + 1) if pipeline else None
        advertise = nxt.server.advertise_keys_requests() if nxt else {}
        self._next = nxt
        return [self._message(session, pid, MASK, {THIS: data, **({NEXT: advertise[pid]} if pid in advertise else {})},
                              arrays=arrays, config={**dict(config), "secagg-id": pid})
                for pid, data in session.mask_requests.items()]

    def _message(self, session: _Session, pid: int, message_type: str, payload: dict[str, bytes], *,
                 arrays: ArrayRecord | None = None, config: dict[str, Any] | None = None) -> Message:
        """One ``train.<message_type>`` message to client ``pid``: the protocol payload, and
        optionally the model and a config (to which the session's parameters are added)."""
        self.last_round.server_bytes_out += sum(len(v) for v in payload.values())
        content = RecordDict({PAYLOAD: ConfigRecord(dict(payload))})
        if arrays is not None:
            content[self.arrayrecord_key] = arrays
        if config is not None:
            content[self.configrecord_key] = ConfigRecord({**config, **self._session_config(session)})
        return Message(content=content, message_type=f"train.{message_type}", dst_node_id=session.nodes[pid])

    def _collect(self, session: _Session, replies: Iterable[Message]) -> dict[str, dict[int, bytes]]:
        """Splits replies into this session's payloads and the next session's, by client id."""
        index = {node: pid for pid, node in enumerate(session.nodes)}
        out: dict[str, dict[int, bytes]] = {THIS: {}, NEXT: {}}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error() or node not in index or PAYLOAD not in msg.content:
                continue
            for key, data in msg.content[PAYLOAD].items():
                if key in out and isinstance(data, bytes):
                    out[key][index[node]] = data
                    self.last_round.server_bytes_in += len(data)
        return out

    def _exchange(self, session: _Session, messages: list[Message]) -> dict[str, dict[int, bytes]]:
        """Sends ``messages`` through the grid and collects the replies (see :meth:`_collect`)."""
        assert self._grid is not None
        return self._collect(session, exchange(self._grid, messages, self.timeout))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Runs the unmasking exchange (with the next session's shares) and returns the weighted average.

        Raises:
            SecAggError: Too many clients dropped (nothing is unmasked in that case).
        """
        session, nxt = self._current, self._next
        if session is None:
            raise SecAggError("aggregate_train called before configure_train")
        self._current = None
        server = session.server
        clock = self.last_round.seconds
        t0 = time.perf_counter()
        got = self._collect(session, replies)
        unmask = server.unmasking_requests(got[THIS])
        share: dict[int, bytes] = {}
        if nxt is not None:
            try:
                share = nxt.server.share_keys_requests(got[NEXT])
            except SecAggError:
                nxt = self._next = None  # too few keys for the next session: it bootstraps instead
        clock["masked_input_compute"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # A client that is not a survivor here gets no share request: the next round then sees
        # a different set of clients and opens a fresh session that includes it again.
        answers = self._exchange(session, [self._message(session, pid, UNMASK,
                                                         {THIS: data, **({NEXT: share[pid]} if pid in share else {})})
                                           for pid, data in unmask.items()])
        clock["unmasking"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = server.aggregate(answers[THIS])
        clock["unmask_compute"] = time.perf_counter() - t0
        if nxt is not None:
            try:
                nxt.mask_requests = nxt.server.masked_input_requests(answers[NEXT])
            except SecAggError:
                self._next = None

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
