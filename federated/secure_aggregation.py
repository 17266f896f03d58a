"""Secure aggregation for any Flower Message-API app: the server-side strategy wrapper.

A user keeps their own ClientApp and strategy and adds two things::

    app = ClientApp(mods=[secure_agg_mod])                  # client: federated.secure_mod
    strategy = SecureAggregation(FedAvg(fraction_evaluate=0.0))   # server: this module
    strategy.start(grid, initial_arrays, num_rounds=3)

The wrapped strategy samples the nodes, builds the train configuration and applies its own
server-side update (FedAvg's average, FedAvgM's momentum, FedAdam's optimizer step, ...);
:class:`SecureAggregation` only replaces how the clients' weighted average is computed: each
client's ``arrays`` and metrics, weighted by its ``num-examples``, are masked with Bonawitz et
al.'s double masking (:mod:`secure_agg`) and the server learns only their sum. The wrapped
strategy's ``aggregate_train`` then receives one reply holding exactly that average (and the
total example count), so its update is the one it would have made without secure
aggregation, within the quantization bound (``SecureRound.error_bound``).

Threat model: a semi-honest server by default (it follows the protocol but tries to learn a
client's update from what it sees); with ``active`` (``secagg-active``), Bonawitz et al.
section 4: clients sign what they were shown and run a consistency check before revealing any
share, against a server that lies about who survived. Client secrets come from the client's
operating system, never from a server message (a reproducible seed may come only from the
node's own configuration, see :mod:`federated.secure_mod`), and clients refuse a threshold
below their own minimum.

Every protocol message is a Flower ``train`` message (so the user's app needs no extra
handler) whose content holds a ConfigRecord under ``"secagg"`` with the ``step``:

=========  ====================================  ==========================================
step       server sends                          the mod on the client does
=========  ====================================  ==========================================
setup      session parameters                    two fresh public keys
share      the roster of share holders           encrypted Shamir shares of its secrets
mask       the strategy's train content (model,  calls the user's train handler, masks the
           config) + forwarded ciphertexts;      weighted arrays and metrics; ``next``:
           ``next``: the next session's setup    the next session's public keys
check      (``active`` only) the survivor set    its signature of that set
unmask     survivors / dropped (and, with        the requested shares; ``next``: its
           ``active``, everyone's signatures);   encrypted shares for the next session
           ``next``: the next session's roster
=========  ====================================  ==========================================

A session's setup and share steps need no model, so from round 2 on they ride on the previous
round's messages (pipelining): a steady round is two exchanges (mask, unmask), three with
``active``. Round 1, and any round whose sampled nodes differ from those that completed the
pre-opened session, first opens a fresh session with two extra exchanges. Every session has
its own keys, secrets and a session id that is never reused.

While an exchange is under way the server starts on each reply as it arrives (checks its
signature, adds a masked input to the sum, removes a survivor's self mask once t shares of its
seed are in: :meth:`secure_agg.SecAggServer.take`), so that little is left when the last
reply comes. For the masking exchange, which Flower's round loop sends, ``start`` hands the
loop a Grid that does this while pulling exactly as Flower's own ``send_and_receive``.

Replies are accepted only as answers to the messages of the current exchange (matched by
message id and sender); a duplicate, a late reply to an earlier message, an error reply or a
malformed one (wrong record type, junk bytes, missing keys) drops its sender for the session,
never the run. Too many dropouts stop the round with :class:`secure_agg.SecAggError` before
any share is revealed.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federated.arrays import from_numpy, to_numpy
from secure_agg import Quantization, Quantizer, SecAggError, SecAggServer
from secure_agg.wire import peek_signed

log = logging.getLogger(__name__)

PAYLOAD = "secagg"  # the RecordDict key of the protocol's ConfigRecord
STEP = "step"
SETUP, SHARE, MASK, CHECK, UNMASK = "setup", "share", "mask", "check", "unmask"
STEPS = (SETUP, SHARE, MASK, CHECK, UNMASK)
THIS = "payload"  # this session's protocol message
NEXT = "next"  # the next session's, riding along


SECAGG_PREFIX = "secagg-"  # run-config keys of secure aggregation's parameters


class SecAggParams(BaseModel):
    """Parameters of secure aggregation inside a Flower round (run-config keys ``secagg-*``).

    Part of the run's one settings model (``FedSettings.secagg``); its defaults live here only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    clip: float = Field(8.0, gt=0, allow_inf_nan=False,
                        description="Weighted parameters and metrics are clipped to [-clip, clip] before quantization.")
    bits: int = Field(32, ge=1, le=64, description="Sums live modulo 2**bits.")
    max_weight: int = Field(10_000, ge=1, le=2**31,
                            description="Upper bound on any client's number of examples (w_k = n_k / max_weight).")
    threshold: float = Field(0.5, gt=0, le=1,
                             description="Fraction of a client's share holders needed to unmask; raised to the "
                                         "protocol's minimum (more than half, more than two thirds with active), "
                                         "which the clients enforce themselves.")
    neighbours: int = Field(0, ge=0, le=100_000,
                            description="0 pairs every client with every other; k > 0: SecAgg+ with k neighbours.")
    seed: int = Field(-1, ge=-1, le=2**32 - 1,
                      description="The server's seed (session ids, SecAgg+ graphs, client sampling); -1 draws them "
                                  "from the OS. It never reaches a client and never seeds a client secret.")
    active: bool = Field(False, description="Bonawitz et al.'s active-adversary mode (signatures and a "
                                            "consistency check).")

    def threshold_for(self, n: int) -> int:
        """t for ``n`` sampled clients: ``threshold`` of the share holders, at least the minimum
        the clients accept (more than half; more than two thirds with ``active``)."""
        holders = n if self.neighbours == 0 else min(n, self.neighbours + 1)
        minimum = (2 * holders) // 3 + 1 if self.active else holders // 2 + 1
        return min(holders, max(minimum, math.ceil(self.threshold * holders)))

    def to_run_config(self) -> dict[str, Any]:
        """Flat ``secagg-*`` run-config keys."""
        return {SECAGG_PREFIX + name.replace("_", "-"): getattr(self, name) for name in type(self).model_fields}

    @classmethod
    def from_run_config(cls, run_config: Any) -> SecAggParams:
        """Reads the ``secagg-*`` keys of a run config (other keys are ignored).

        Raises:
            ValueError: one line naming an unknown ``secagg-*`` key or a bad value.
        """
        known = {SECAGG_PREFIX + name.replace("_", "-"): name for name in cls.model_fields}
        fields: dict[str, Any] = {}
        for key, value in dict(run_config).items():
            if not key.startswith(SECAGG_PREFIX):
                continue
            if key not in known:
                raise ValueError(f"unknown run-config key {key!r} (allowed: {', '.join(known)})")
            fields[known[key]] = value
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise ValueError(first_error(exc, SECAGG_PREFIX)) from None


def first_error(exc: ValidationError, prefix: str | None = None) -> str:
    """A pydantic validation error as one line: the first bad field, what is wrong, the value given.

    Args:
        exc: The error.
        prefix: ``None`` names the field as in Python (``min_replies``); a string names it
            as a run-config key, hyphenated after that prefix (``secagg-max-weight``).
    """
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:
        return msg  # a whole-model check: its message names the fields
    name = ".".join(str(p) for p in err["loc"])
    key = name if prefix is None else f"run-config key {prefix + name.replace('_', '-')!r}"
    return f"{key}: {msg}, got {err.get('input')!r}"


def split_run_config(run_config: Any) -> tuple[dict[str, Any], SecAggParams]:
    """Separates the ``secagg-*`` keys from the rest of a run config."""
    rest = {k: v for k, v in dict(run_config).items() if not k.startswith(SECAGG_PREFIX)}
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


def decode_sum(total: np.ndarray, quantizer: Quantizer, count: int, max_weight: int,
               size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes the survivors' unmasked sum of :func:`federated.secure_mod.client_vector` words.

    The clients' rounded integers were summed exactly; the shifts come off in integer
    arithmetic and the summed weights (``total_examples / max_weight``, the last word's
    count) divide once. With a power-of-two scale and dyadic weights (``max_weight`` a power
    of two, or every client's ``num_examples`` equal to it), entries quantized without
    rounding give the float64 weighted mean rounded once; for two equal-weight clients its
    float32 cast is bit for bit Flower FedAvg's float32 mean ``x1 * 0.5 + x2 * 0.5``.

    Args:
        total: The unmasked sum: ``size`` weighted entries, the metric words, the example count.
        quantizer: The session's quantization.
        count: Clients summed (the survivors).
        max_weight: ``secagg-max-weight`` (``w_k = n_k / max_weight``).
        size: Entries of the model.

    Returns:
        ``(average, metric_sums)``: the example-weighted mean of the model entries (float64)
        and the float sums of the metric words (weighted value, weight per metric).
    """
    average = quantizer.dequantize(total[:size], count, int(total[-1]) / max_weight)
    return average, quantizer.dequantize(total[size:-1], count)


def exchange(grid: Grid, messages: list[Message], timeout: float | None,
             on_reply: Callable[[Message], None] | None = None, interval: float | None = None) -> list[Message]:
    """Pushes ``messages`` and pulls their replies until all arrived or ``timeout`` passed.

    Like ``Grid.send_and_receive`` but polling from 1 ms up to 10 ms instead of at a fixed
    0.1 s (simulation) or 3 s (deployment): secure aggregation needs at least one more
    exchange per round than FedAvg, and each would otherwise wait out a polling interval.
    Only replies to these messages are pulled; a reply that comes after ``timeout`` (``None``:
    no limit) is never pulled by a later exchange. ``on_reply`` is called with each reply as it
    is pulled, while others are still outstanding (the last ones pulled are only returned).
    ``interval``: pull every ``interval`` seconds instead, as ``send_and_receive`` does (the
    time ``on_reply`` takes counts towards it).
    """
    pending = {m for m in grid.push_messages(messages) if m}
    replies: list[Message] = []
    deadline = time.monotonic() + (math.inf if timeout is None else timeout)
    pause = 0.001 if interval is None else interval
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            start = time.monotonic()
            if on_reply is not None:
                for reply in got:
                    on_reply(reply)
            if interval is None:
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
            else:
                time.sleep(max(0.0, interval - (time.monotonic() - start)))
    return replies


class _TakingGrid(Grid):
    """The Grid that :meth:`SecureAggregation.start` hands to Flower's round loop.

    It is the user's Grid, except while it waits for the replies to the masking messages:
    then each reply pulled goes to the session's server as it arrives (its signature checked,
    its masked input added to the sum: :meth:`secure_agg.SecAggServer.take`), so that this
    work overlaps the wait for the slower clients instead of following it. It pulls exactly
    as Flower's ``send_and_receive`` does, at the Grid's own interval (``pull_interval``,
    0.1 s in simulation; 3 s for the deployment Grid), so the exchange itself takes as long
    as under FedAvg.
    """

    def __init__(self, grid: Grid, owner: SecureAggregation) -> None:
        self._grid, self._owner = grid, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        take = self._owner._mask_taker(messages)
        if take is None:
            return self._grid.send_and_receive(messages, timeout=timeout)
        return exchange(self._grid, messages, timeout, on_reply=take,
                        interval=float(getattr(self._grid, "pull_interval", 3.0)))


@dataclass
class SecureRound:
    """What the server learned in one secure round (only aggregates and counts).

    ``pipelined`` says whether the round used a session whose keys and shares were exchanged
    during the previous round or opened a fresh one. ``discarded`` maps a session client id
    to why its reply was not used (error reply, malformed, refused by the protocol).
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
    session: int = 0
    nodes: list[int] = field(default_factory=list)
    survivor_ids: list[int] = field(default_factory=list)
    discarded: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Session:
    """The server side of one session and the nodes it was opened for (client id = position)."""

    server: SecAggServer
    nodes: list[int]
    serial: int
    dim: int
    mask_requests: dict[int, bytes] = field(default_factory=dict)


class SecureAggregation(Strategy):
    """Wraps a Message-API strategy so that its clients' weighted average is computed securely.

    Args:
        strategy: The strategy to wrap (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi,
            or any strategy whose ``aggregate_train`` takes the example-weighted mean of the
            replies' ArrayRecord and MetricRecord). It samples, configures and updates.
        params: Secure-aggregation parameters (see :class:`SecAggParams`).
        metrics: Reply metrics aggregated (securely, weighted by examples) besides the
            arrays. A reply that lacks one contributes nothing to it; a metric no reply
            carried is left out of the result.
        timeout: Seconds to wait for each extra exchange (session opening, unmasking).
        num_rounds: Rounds the run will have; the last one opens no next session. Set by
            :meth:`start`; a driver that calls ``configure_train`` itself may set it.
        trusted_keys: With ``params.active``: the clients' raw Ed25519 identity public keys;
            the server then also refuses key certificates from anyone else (the clients check
            them in any case).

    Raises:
        TypeError: ``strategy`` is not a Message-API strategy.
    """

    def __init__(self, strategy: Strategy, params: SecAggParams | None = None, *,
                 metrics: Iterable[str] = ("train_loss",), timeout: float = 600.0,
                 num_rounds: int | None = None, trusted_keys: Iterable[bytes] | None = None) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"SecureAggregation wraps a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}")
        self.strategy = strategy
        self.params = params or SecAggParams()
        self.metrics = tuple(metrics)
        if len(set(self.metrics)) != len(self.metrics) or not all(isinstance(m, str) and m for m in self.metrics):
            raise ValueError(f"metrics must be distinct non-empty names, got {self.metrics}")
        self.timeout = timeout
        self.num_rounds = num_rounds
        self.trusted_keys = None if trusted_keys is None else list(trusted_keys)
        self.last_round = SecureRound()
        self._grid: Grid | None = None
        self._current: _Session | None = None
        self._next: _Session | None = None
        self._mask_messages: dict[int, Message] = {}
        self._like: dict[str, np.ndarray] = {}
        self._serial = 0

    # --- delegation ------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Settings of the wrapped strategy (fraction_train, weighted_by_key, ...) read through.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def weight_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    @property
    def array_key(self) -> str:
        return str(getattr(self.strategy, "arrayrecord_key", "arrays"))

    def summary(self) -> None:
        """The wrapped strategy's summary, then the secure-aggregation parameters."""
        self.strategy.summary()
        log.info("secure aggregation: %s, metrics %s", self.params, self.metrics)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, *args: Any,
              **kwargs: Any) -> Any:
        """Flower's round loop; records ``num_rounds`` so the last round opens no next session."""
        self.num_rounds = num_rounds
        return super().start(_TakingGrid(grid, self), initial_arrays, num_rounds, *args, **kwargs)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's evaluation (federated evaluation is not aggregated securely)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # --- sessions --------------------------------------------------------------------------

    def _sample(self, server_round: int, count: int, nodes: Iterable[int]) -> list[int]:
        """``count`` nodes drawn with the run's seed (the same every time for a round)."""
        pool = sorted(nodes)
        if count >= len(pool):
            return pool
        rng = random.Random(f"agora-secagg|{self.params.seed}|sample|{server_round}")
        return sorted(rng.sample(pool, count))

    def _open(self, nodes: list[int]) -> _Session:
        n = len(nodes)
        if n < 2:
            raise SecAggError(f"secure aggregation needs at least 2 sampled clients, got {n}")
        dim = sum(int(v.size) for v in self._like.values()) + 2 * len(self.metrics) + 1
        self._serial += 1
        # A fresh id for every session, also when seeded: a reused session id would let a
        # reply of one session pass the envelope checks of another.
        seed = None if self.params.seed < 0 else f"{self.params.seed}|session|{self._serial}"
        extra: dict[str, Any] = {"active": True, "trusted_keys": self.trusted_keys} if self.params.active else {}
        server = SecAggServer(list(range(n)), self.params.threshold_for(n), dim, bits=self.params.bits,
                              neighbours=self.params.neighbours or None, seed=seed, **extra)
        return _Session(server, list(nodes), self._serial, dim)

    def _record(self, session: _Session, pid: int, step: str, payload: bytes, nxt: bytes | None = None) -> ConfigRecord:
        self.last_round.server_bytes_out += len(payload) + (len(nxt) if nxt is not None else 0)
        record = ConfigRecord({STEP: step, "id": pid, "clients": len(session.nodes), THIS: payload,
                               "clip": float(self.params.clip), "bits": int(self.params.bits),
                               "max-weight": int(self.params.max_weight), "metrics": ",".join(self.metrics),
                               "weight-key": self.weight_key, "array-key": self.array_key,
                               "active": bool(self.params.active)})
        if nxt is not None:
            record[NEXT] = nxt
        return record

    def _messages(self, session: _Session, step: str, payloads: dict[int, bytes],
                  nxt: dict[int, bytes] | None = None) -> dict[int, Message]:
        """One protocol-only ``train`` message per client id (the mod answers it without the user's handler)."""
        out = {}
        for pid, data in payloads.items():
            record = self._record(session, pid, step, data, (nxt or {}).get(pid))
            out[pid] = Message(content=RecordDict({PAYLOAD: record}), message_type="train",
                               dst_node_id=session.nodes[pid])
        return out

    def _sender(self, session: _Session, sent: dict[str, int], msg: Message, seen: set[int]) -> int | None:
        """The client id whose message ``msg`` answers, or None for a reply to use no further.

        A reply counts only if it answers one of ``sent`` (message id -> client id) and comes
        from that message's node; the first such reply per client is used (added to ``seen``).
        """
        meta = msg.metadata
        pid = sent.get(meta.reply_to_message_id)
        if pid is None or meta.src_node_id != session.nodes[pid] or pid in seen:
            return None  # stale (another exchange), misrouted or duplicated: never used
        seen.add(pid)
        return pid

    @staticmethod
    def _payload(msg: Message, step: str) -> tuple[bytes | None, bytes | None, str]:
        """(this session's payload, the next session's or None, "") or (None, None, why it is refused)."""
        if msg.has_error():
            reason = str(msg.error.reason)
            if step != MASK and not reason.startswith("secure aggregation:"):
                # Only the mod answers these steps; a plain handler that got one fails.
                reason += " (a ClientApp without secure_agg_mod in its mods fails this way)"
            return None, None, f"error reply: {reason}"
        record = msg.content[PAYLOAD] if PAYLOAD in msg.content else None
        if not isinstance(record, ConfigRecord):
            return None, None, (f"reply without a '{PAYLOAD}' ConfigRecord (is secure_agg_mod in the "
                                "node's ClientApp mods?)")
        data = record.get(THIS)
        if not isinstance(data, bytes):
            return None, None, f"'{THIS}' is not bytes"
        following = record.get(NEXT)
        return data, following if isinstance(following, bytes) else None, ""

    def _collect(self, session: _Session, sent: dict[str, int], replies: Iterable[Message],
                 step: str) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """This session's and the next session's payloads, by client id, from the replies to ``sent``.

        ``sent`` maps the message id of each message of this exchange to its client id (see
        :meth:`_sender` for which replies count). Anything else about a reply that is wrong
        drops that client, with the reason in ``last_round.discarded``.
        """
        this: dict[int, bytes] = {}
        nxt: dict[int, bytes] = {}
        seen: set[int] = set()
        for msg in replies:
            pid = None
            try:
                pid = self._sender(session, sent, msg, seen)
                if pid is None:
                    continue
                data, following, why = self._payload(msg, step)
                if data is None:
                    self.last_round.discarded[pid] = f"{step}: {why}"
                    continue
                this[pid] = data
                self.last_round.server_bytes_in += len(data)
                if following is not None:
                    nxt[pid] = following
                    self.last_round.server_bytes_in += len(following)
            except Exception as exc:  # any malformed reply drops its sender, not the run
                if pid is not None:
                    self.last_round.discarded[pid] = f"{step}: malformed reply ({type(exc).__name__}: {exc})"
                    this.pop(pid, None)
                    nxt.pop(pid, None)
        return this, nxt

    def _taker(self, session: _Session, messages: dict[int, Message]) -> Callable[[Message], None]:
        """Hands each reply to ``messages`` to the servers as it arrives (``SecAggServer.take``).

        The same replies count as for :meth:`_collect` (the first per client, from its node);
        the next session's payload goes to the pre-opened next session's server. Whatever is
        wrong with a reply is left for :meth:`_collect` and the server's round call to report.
        """
        sent: dict[str, int] = {}
        seen: set[int] = set()
        nxt = self._next

        def take(msg: Message) -> None:
            if not sent:  # the message ids exist once the messages are pushed
                sent.update((m.metadata.message_id, pid) for pid, m in messages.items() if m.metadata.message_id)
            try:
                pid = self._sender(session, sent, msg, seen)
                if pid is None:
                    return
                data, following, _ = self._payload(msg, "")
            except Exception:
                return
            if data is not None:
                session.server.take(pid, data)
                if nxt is not None and following is not None:
                    nxt.server.take(pid, following)
        return take

    def _mask_taker(self, messages: list[Message]) -> Callable[[Message], None] | None:
        """:meth:`_taker` for the masking messages when ``messages`` are exactly those, else None."""
        mine = list(self._mask_messages.values())
        if self._current is None or not mine or len(mine) != len(messages) or \
                any(a is not b for a, b in zip(mine, messages, strict=True)):
            return None
        return self._taker(self._current, self._mask_messages)

    def _exchange(self, session: _Session, step: str, messages: dict[int, Message]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Sends ``messages`` (by client id) and collects the replies to exactly these messages."""
        assert self._grid is not None
        ordered = list(messages.items())
        replies = exchange(self._grid, [m for _, m in ordered], self.timeout, on_reply=self._taker(session, messages))
        sent = {m.metadata.message_id: pid for pid, m in ordered if m.metadata.message_id}
        return self._collect(session, sent, replies, step)

    def _call(self, server_method: Any, responses: dict[int, bytes]) -> Any:
        """Calls a SecAggServer round with the clients' responses.

        The protocol refuses a malformed response with SecAggError and drops its sender; any
        other exception on a response is treated the same way here: the offending responses
        are found by reading each one as a signed reply (body plus 64-byte signature, checked
        by the server itself on the second call), dropped, and the round is called again.
        """
        try:
            return server_method(responses)
        except SecAggError:
            raise
        except Exception:
            clean = {}
            for pid, data in responses.items():
                try:
                    peek_signed(data)
                    clean[pid] = data
                except Exception as exc:
                    self.last_round.discarded[pid] = f"undecodable reply ({type(exc).__name__})"
            return server_method(clean)

    def _bootstrap(self, nodes: list[int]) -> _Session:
        """Opens a fresh session and runs its setup and share steps (two exchanges)."""
        t0 = time.perf_counter()
        session = self._open(nodes)
        keys, _ = self._exchange(session, SETUP, self._messages(session, SETUP, session.server.advertise_keys_requests()))
        rosters = self._call(session.server.share_keys_requests, keys)
        shares, _ = self._exchange(session, SHARE, self._messages(session, SHARE, rosters))
        session.mask_requests = self._call(session.server.masked_input_requests, shares)
        self.last_round.seconds["bootstrap"] = time.perf_counter() - t0
        return session

    # --- the round -------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's train messages, each carrying its client's masking request.

        Uses the session pre-opened during the previous round when its clients are exactly the
        sampled ones; otherwise first opens a fresh session (two exchanges through ``grid``).
        When another round follows on the same nodes, the messages also open its session.

        Raises:
            SecAggError: Fewer than two nodes sampled, or too few completed the session's
                opening for the threshold.
        """
        planned = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._current = None
        self._mask_messages = {}
        if not planned:
            return []
        self._like = to_numpy(arrays, copy=False)
        first = planned[0].content
        shared = all(m.content is first for m in planned)
        all_nodes = sorted(grid.get_node_ids())
        if self.params.seed >= 0 and shared:
            # Flower's strategies send one shared content to a random.sample of the nodes; with
            # a seed, the sample is drawn from the run's seed instead of the global generator.
            nodes = self._sample(server_round, len(planned), all_nodes)
            contents = {node: first for node in nodes}
        else:
            contents = {m.metadata.dst_node_id: m.content for m in planned}
            nodes = sorted(contents)
        self.last_round = SecureRound(sampled=len(nodes), nodes=list(nodes))
        session, self._next = self._next, None
        dim = sum(int(v.size) for v in self._like.values()) + 2 * len(self.metrics) + 1
        if session is not None and session.dim == dim and \
                [session.nodes[pid] for pid in sorted(session.mask_requests)] == nodes:
            self.last_round.pipelined = True
        else:
            session = self._bootstrap(nodes)
        self._current = session
        self.last_round.threshold = session.server.threshold
        self.last_round.session = session.serial
        # Open the next session on the same nodes when the next round samples them again.
        nxt = None
        if self.num_rounds is None or server_round < self.num_rounds:
            if self.params.seed >= 0 and shared:
                following = self._sample(server_round + 1, len(nodes), all_nodes)
            else:  # unpredictable sampling: only when every node takes part in every round
                following = nodes if nodes == all_nodes else []
            if following == nodes:
                nxt = self._open(nodes)
        advertise = nxt.server.advertise_keys_requests() if nxt else {}
        self._next = nxt
        messages = {}
        for pid, data in session.mask_requests.items():
            node = session.nodes[pid]
            record = self._record(session, pid, MASK, data, advertise.get(pid))
            # One RecordDict per message: the strategy's records (shared) plus this client's.
            messages[pid] = Message(content=RecordDict({**dict(contents[node].items()), PAYLOAD: record}),
                                    message_type="train", dst_node_id=node)
        self._mask_messages = messages
        return list(messages.values())

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unmasks the sum of the masked replies and hands its average to the wrapped strategy.

        Runs the unmasking exchange (with the next session's shares riding along; with
        ``active``, the consistency check first) and passes one reply holding the weighted
        average arrays and metrics and the total example count to the wrapped strategy's
        ``aggregate_train``.

        Raises:
            SecAggError: Too many clients dropped (nothing is unmasked in that case).
        """
        session, nxt = self._current, self._next
        self._current = None
        if session is None:
            return None, None  # nothing was configured (no node sampled)
        server = session.server
        clock = self.last_round.seconds
        t0 = time.perf_counter()
        sent = {m.metadata.message_id: pid for pid, m in self._mask_messages.items() if m.metadata.message_id}
        if not sent:
            raise SecAggError("the masking messages of configure_train were never pushed through the Grid; "
                              "send exactly the messages it returned")
        masked, following = self._collect(session, sent, list(replies), MASK)
        if self.params.active:
            checks = self._call(server.consistency_check_requests, masked)
            clock["masked_input_compute"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            signed, _ = self._exchange(session, CHECK, self._messages(session, CHECK, checks))
            clock["consistency_check"] = time.perf_counter() - t1
            t0 = time.perf_counter()
            unmask = self._call(server.unmasking_requests, signed)
        else:
            unmask = self._call(server.unmasking_requests, masked)
        share: dict[int, bytes] = {}
        if nxt is not None:
            try:
                share = self._call(nxt.server.share_keys_requests, following)
            except SecAggError:
                nxt = self._next = None  # too few keys for the next session: it bootstraps instead
        clock["masked_input_compute"] = clock.get("masked_input_compute", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        # A client that is not a survivor gets no share request: the next round then sees
        # other clients than the pre-opened session's and opens a fresh session.
        answers, next_shares = self._exchange(session, UNMASK, self._messages(session, UNMASK, unmask, share))
        clock["unmasking"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = self._call(server.aggregate, answers)
        clock["unmask_compute"] = time.perf_counter() - t0
        if nxt is not None:
            try:
                nxt.mask_requests = self._call(nxt.server.masked_input_requests, next_shares)
            except SecAggError:
                self._next = None
        for pid, why in server.discarded.items():
            self.last_round.discarded.setdefault(pid, why)
        return self._average(server_round, session, total)

    def _average(self, server_round: int, session: _Session,
                 total: np.ndarray) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decodes the unmasked sum and lets the wrapped strategy aggregate it as one reply."""
        server = session.server
        count = len(server.survivors)
        quantizer = Quantization(self.params.clip, self.params.bits).for_clients(len(session.nodes))
        total_examples = int(total[-1])
        if total_examples < 1:
            raise SecAggError(f"the survivors report {total_examples} examples in total; nothing to average")
        size = sum(int(v.size) for v in self._like.values())
        average, summed = decode_sum(total, quantizer, count, self.params.max_weight, size)
        metrics: dict[str, Any] = {self.weight_key: total_examples}
        for i, name in enumerate(self.metrics):
            value, weight = summed[2 * i], summed[2 * i + 1]
            # The weight sum is a multiple of 1 / max_weight; below half of one, nobody reported it.
            if weight * self.params.max_weight >= 0.5:
                metrics[name] = float(value / weight)
        self.last_round.survivors, self.last_round.dropped = count, len(server.dropped)
        self.last_round.survivor_ids = list(server.survivors)
        self.last_round.total_examples = total_examples
        self.last_round.error_bound = quantizer.error_bound(count) * self.params.max_weight / total_examples
        arrays = unflatten(average, self._like)
        reply = Message(content=RecordDict({self.array_key: from_numpy(arrays),
                                            "metrics": MetricRecord(metrics)}),
                        dst_node_id=0, message_type="train")
        arrays, aggregated = self.strategy.aggregate_train(server_round, [reply])
        if aggregated is not None:
            aggregated["secagg-survivors"] = count
            aggregated["secagg-dropped"] = len(server.dropped)
        return arrays, aggregated
