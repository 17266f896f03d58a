"""Secure aggregation for any Flower Message-API app: the client mod.

A user adds one line to their own, otherwise unchanged ClientApp::

    from federated import secure_agg_mod

    app = ClientApp(mods=[secure_agg_mod])

    @app.train()
    def train(msg, context):          # the user's handler, as in Flower's quickstart
        ...
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"train_loss": loss, "num-examples": n})}), reply_to=msg)

The mod answers the protocol messages of :class:`federated.SecureAggregation` itself (they
are ``train`` messages carrying a ``"secagg"`` ConfigRecord; every other message passes
through untouched). For the masking message it calls the user's train handler with a plain
``train`` message (the strategy's arrays and config, nothing of the protocol), weights the
returned ``arrays`` and the listed metrics by the reply's ``num-examples``, quantizes them,
masks them and replies with the masked vector only: the update never leaves the node in
the clear.

Where secrets come from: the client's keys, self-mask seed and Shamir coefficients are drawn
from the operating system (``os.urandom``). A reproducible seed for tests may come only from
the node's own side: the node config key ``secagg-seed`` (``flower-supernode --node-config
"secagg-seed=7"``) or the ``seed`` argument of :func:`make_secure_agg_mod`; never from a
server message or the run config (both are the server's). Each session mixes in a counter
kept in the node's state, so even a seeded node never repeats a secret.

Between messages the protocol state (key material only) lives in ``context.state``, so it
survives in both the simulation and the deployment engine.

The masking itself is a :class:`envs.Masker`: by default this node's session
(:class:`SessionMasker`); an app whose clients are :class:`envs.Agent` objects hands the mod
its agent's Masker (``make_secure_agg_mod(masker=...)``, as :mod:`federated.client_app` does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from federated.arrays import to_numpy
from federated.secure_aggregation import (
    CHECK,
    MASK,
    NEXT,
    PAYLOAD,
    SETUP,
    SHARE,
    STEP,
    THIS,
    UNMASK,
)
from secure_agg import Quantization, SecAggClient, SecAggError
from secure_agg.prg import word_dtype
from secure_agg.quantize import quantize_into

STATE_KEY = "secagg-client"  # this session's client
STATE_NEXT = "secagg-next-client"  # the next session's, once its keys went out
STATE_COUNT = "secagg-sessions"  # sessions this node opened (mixed into a seeded node's secrets)
SEED_KEY = "secagg-seed"  # node-config key of a reproducible (test) seed
IDENTITY_KEY = "secagg-identity-key"  # node-config key: path of this node's signing key (active mode)
TRUSTED_KEYS = "secagg-trusted-keys"  # node-config key: path of the trusted public keys (active mode)

REQUEST = "request"  # the server's masking request, kept with the session until it is answered

ClientAppCallable = Callable[[Message, Context], Message]
Identity = Callable[[Context], tuple[Any, Any]]
MaskerOf = Callable[[Context], Any]


class _HandlerFailed(Exception):
    """Carries an exception of the user's own handler past the mod's error handling."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def client_vector(arrays: Mapping[str, Any], num_examples: int, metrics: Mapping[str, Any],
                  metric_names: tuple[str, ...], *, clip: float, bits: int, max_weight: int,
                  num_clients: int) -> np.ndarray:
    """A client's input to secure aggregation, quantized: weighted arrays, metrics, then n_k.

    With ``w = num_examples / max_weight`` the layout is ``[w * arrays..., w * m, w (or 0 when
    the metric is absent) for each metric name, num_examples]``; summed over clients, the
    server divides by the summed weights, which gives the example-weighted means. Each
    weighted value is clipped to [-clip, clip] and quantized as :class:`secure_agg.Quantizer`
    does (``round(v * scale) + offset``, within half a step; exact for every weighted value
    whose lowest mantissa bit is at least ``1 / scale``, see :mod:`secure_agg.quantize`).

    Raises:
        SecAggError: ``num_examples`` is not in [1, max_weight] or could wrap the sum, or an
            array holds NaN or an infinity.
    """
    if not 0 < num_examples <= max_weight:
        raise SecAggError(f"a client has {num_examples} examples; secagg-max-weight ({max_weight}) must bound it")
    limit = ((1 << bits) - 1) // num_clients
    if num_examples > limit:
        raise SecAggError(f"{num_clients} clients with up to {num_examples} examples could wrap modulo 2**{bits}")
    quantizer = Quantization(clip, bits).for_clients(num_clients)
    w = num_examples / max_weight
    sizes = [int(np.size(v)) for v in arrays.values()]
    size = sum(sizes)
    out = np.empty(size + 2 * len(metric_names) + 1, dtype=word_dtype(bits))
    # One float64 scratch block for every array: this runs on the full model every round.
    scratch = np.empty(min(size, 1 << 15) or 1, dtype=np.float64)
    pos = 0
    for v, n in zip(arrays.values(), sizes, strict=True):
        flat = np.asarray(v).reshape(-1)
        bounds = (flat.min(), flat.max()) if n else None
        if bounds is not None and not (np.isfinite(bounds[0]) and np.isfinite(bounds[1])):
            raise SecAggError("cannot aggregate arrays holding NaN or infinite entries")
        quantize_into(flat, w, quantizer, out[pos:pos + n], scratch, value_range=bounds)
        pos += n
    extra = np.zeros(2 * len(metric_names))
    for i, name in enumerate(metric_names):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            extra[2 * i:2 * i + 2] = (float(value), 1.0)
    if extra.size:
        quantize_into(extra, w, quantizer, out[size:size + extra.size], scratch)
    out[-1] = num_examples
    return out


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"secure aggregation: {reason}"),
                   reply_to=msg)


def _reply(msg: Message, payload: bytes, nxt: bytes | None = None) -> Message:
    record = ConfigRecord({THIS: payload, **({NEXT: nxt} if nxt is not None else {})})
    return Message(content=RecordDict({PAYLOAD: record}), reply_to=msg)


def _load(context: Context, key: str = STATE_KEY) -> SecAggClient:
    if key not in context.state:
        raise SecAggError("no secure-aggregation session on this node: its opening messages never arrived")
    return SecAggClient.from_bytes(context.state[key]["client"])


def _save(context: Context, client: SecAggClient, key: str = STATE_KEY, request: bytes | None = None) -> None:
    record = ConfigRecord({"client": client.to_bytes()})
    if request is not None:
        record[REQUEST] = request
    context.state[key] = record


class SessionMasker:
    """Masker: this node's open secure-aggregation session masks a vector for the server.

    The session (its keys and the shares it holds) and the server's pending masking request
    live in ``context.state``, put there by the mod. :meth:`mask` adds the session's self mask
    and pair masks to the quantized vector and returns what leaves the node: the masked
    vector in the session's signed reply (bytes).

    Args:
        context: This node's Flower context.
        pending: The session and its masking request when the caller has them at hand (the
            mod, which just read them and built the vector for this call alone, so it is
            masked in its own memory); ``None`` reads both from ``context.state``.
    """

    def __init__(self, context: Context, pending: tuple[SecAggClient, bytes] | None = None) -> None:
        self.context = context
        self.pending = pending

    def mask(self, vector: np.ndarray) -> bytes:
        """The masked ``vector`` (words modulo 2**bits) as the signed reply to the pending request.

        Raises:
            SecAggError: no session is open, no request is pending, or the protocol refuses it.
        """
        pending, self.pending = self.pending, None  # one answer per request
        if pending is not None:
            client, request = pending
        else:
            if STATE_KEY not in self.context.state or REQUEST not in self.context.state[STATE_KEY]:
                raise SecAggError("no masking request is pending on this node")
            request = bytes(self.context.state[STATE_KEY][REQUEST])
            client = _load(self.context)
        # The mod's session comes with a vector built for this call only: it is masked in its own memory.
        masked = client.masked_input(request, vector, in_place=pending is not None)
        _save(self.context, client)  # the request is answered: it is not kept
        return masked


def _forget(context: Context, *keys: str) -> None:
    for key in keys:
        if key in context.state:
            del context.state[key]


def _field(record: ConfigRecord, key: str, kind: type) -> Any:
    value = record.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SecAggError(f"the server's '{PAYLOAD}' record lacks {key!r} of type {kind.__name__}")
    return value


_CLIENT_KWARGS = set(inspect.signature(SecAggClient.__init__).parameters)


def make_secure_agg_mod(*, seed: int | str | None = None, identity: Identity | None = None,
                        allow_semi_honest: bool | None = None, masker: MaskerOf | None = None) -> Callable[..., Message]:
    """A client mod running secure aggregation (see the module docstring).

    Args:
        seed: A reproducible seed for this node's secrets (tests only; ``None`` reads the node
            config key ``secagg-seed``, and without it every secret comes from the OS).
        identity: ``f(context) -> (identity_key, trusted_keys)`` for ``active`` sessions (a
            test hook); ``None`` reads the key files named by the node config keys
            ``secagg-identity-key`` and ``secagg-trusted-keys``.
        allow_semi_honest: Whether a node that has an identity also joins semi-honest
            sessions. Default: no, so a server cannot downgrade it; a node without an
            identity joins semi-honest sessions only.
        masker: ``f(context) -> Masker`` that masks this node's update (an agent's Masker);
            default: :class:`SessionMasker` of the node's open session.
    """

    def node_seed(context: Context) -> str | None:
        own = seed if seed is not None else context.node_config.get(SEED_KEY)
        if own is None:
            return None
        # A counter in the node's own state: a seeded node never draws the same secret twice,
        # whatever the server sends.
        count = int(context.state[STATE_COUNT]["n"]) + 1 if STATE_COUNT in context.state else 1
        context.state[STATE_COUNT] = ConfigRecord({"n": count})
        return f"{own}|node-{context.node_id}|session-{count}"

    def new_client(context: Context, record: ConfigRecord) -> SecAggClient:
        pid = _field(record, "id", int)
        kwargs: dict[str, Any] = {"seed": node_seed(context)}
        has_identity = identity is not None or IDENTITY_KEY in context.node_config
        if not record.get("active") and has_identity and not allow_semi_honest:
            # A node set up for active mode never lets the server downgrade it.
            raise SecAggError("this node is configured for active secure aggregation and refuses a semi-honest session")
        if record.get("active"):
            if "active" not in _CLIENT_KWARGS:
                raise SecAggError("the server asks for active mode, which this client's secure_agg does not support")
            key, trusted = identity(context) if identity is not None else _identity_from_node_config(context)
            kwargs.update(active=True, identity_key=key, trusted_keys=trusted)
        return SecAggClient(pid, **kwargs)

    def train_and_mask(msg: Message, context: Context, call_next: ClientAppCallable, record: ConfigRecord,
                       client: SecAggClient, request: bytes) -> Message | bytes:
        # The user's handler sees a plain train message: the strategy's records only.
        like_key = record.get("array-key", "arrays")
        msg.content = RecordDict({k: v for k, v in msg.content.items() if k != PAYLOAD})
        if like_key not in msg.content or not isinstance(msg.content[like_key], ArrayRecord):
            raise SecAggError(f"the masking message carries no ArrayRecord {like_key!r}")
        names = list(msg.content[like_key].keys())
        try:
            reply = call_next(msg, context)
        except Exception as exc:
            raise _HandlerFailed(exc) from exc
        if reply.has_error():
            return reply
        arrays = _reply_arrays(reply, like_key)
        if set(arrays) != set(names):
            raise SecAggError(f"the train handler returned arrays {sorted(arrays)}, the global model has {sorted(names)}")
        weight_key = _field(record, "weight-key", str)
        metrics = _reply_metrics(reply)
        n = metrics.get(weight_key)
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n):
            raise SecAggError(f"the train handler's reply needs an integer metric {weight_key!r}, got {n!r}")
        metric_names = tuple(m for m in _field(record, "metrics", str).split(",") if m)
        vector = client_vector({k: arrays[k] for k in names}, int(n), metrics, metric_names,
                               clip=float(_field(record, "clip", float)), bits=client.bits,
                               max_weight=_field(record, "max-weight", int),
                               num_clients=_field(record, "clients", int))
        # The default masker takes the session as read above; an agent's Masker finds the
        # request waiting with the session in context.state.
        return (SessionMasker(context, (client, request)) if masker is None else masker(context)).mask(vector)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train" or not msg.has_content() \
                or PAYLOAD not in msg.content:
            return call_next(msg, context)
        record = msg.content[PAYLOAD]
        try:
            if not isinstance(record, ConfigRecord):
                raise SecAggError(f"'{PAYLOAD}' is not a ConfigRecord")
            step = _field(record, STEP, str)
            if step == SETUP:
                # A fresh session: whatever this node held from an earlier one is void.
                _forget(context, STATE_KEY, STATE_NEXT)
                client = new_client(context, record)
                out = client.advertise_keys(_field(record, THIS, bytes))
                _save(context, client)
                return _reply(msg, out)
            if step in (SHARE, CHECK):
                # One protocol round on the stored session, nothing of the user's app involved.
                client = _load(context)
                answer = client.share_keys if step == SHARE else client.consistency_check
                out = answer(_field(record, THIS, bytes))
                _save(context, client)
                return _reply(msg, out)
            if step == MASK:
                client = _load(context)
                request = _field(record, THIS, bytes)
                if masker is not None:
                    # The request waits with the session for the node's Masker to answer it.
                    _save(context, client, request=request)
                masked = train_and_mask(msg, context, call_next, record, client, request)
                if isinstance(masked, Message):
                    return masked  # the user's handler replied with an error
                nxt = None
                if isinstance(record.get(NEXT), bytes):
                    try:
                        following = new_client(context, record)
                        nxt = following.advertise_keys(record[NEXT])
                        _save(context, following, STATE_NEXT)
                    except SecAggError:
                        pass  # refusing the next session must not cost this one: the server opens a fresh one
                return _reply(msg, masked, nxt)
            if step == UNMASK:
                client = _load(context)
                _forget(context, STATE_KEY)  # this session is over, answered or refused
                out = client.unmasking(_field(record, THIS, bytes))
                nxt = None
                if isinstance(record.get(NEXT), bytes) and STATE_NEXT in context.state:
                    following = _load(context, STATE_NEXT)
                    try:
                        nxt = following.share_keys(record[NEXT])
                        _save(context, following)
                    except SecAggError:
                        pass
                _forget(context, STATE_NEXT)
                return _reply(msg, out, nxt)
            raise SecAggError(f"unknown step {step!r}")
        except _HandlerFailed as failed:
            raise failed.original from None  # the user's handler failed: Flower reports it as without the mod
        except SecAggError as exc:
            return _error(msg, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return _error(msg, f"malformed request ({type(exc).__name__}: {exc})")

    mod.__name__ = mod.__qualname__ = "secure_agg_mod"
    mod.__doc__ = "Flower client mod: secure aggregation of the train handler's weighted arrays and metrics."
    return mod


def _reply_arrays(reply: Message, key: str) -> dict[str, np.ndarray]:
    records = reply.content.array_records
    record = records.get(key) if key in records else (next(iter(records.values())) if len(records) == 1 else None)
    if record is None:
        raise SecAggError(f"the train handler's reply has {len(records)} ArrayRecords and none named {key!r}")
    return to_numpy(record, copy=False)


def _reply_metrics(reply: Message) -> dict[str, Any]:
    records = reply.content.metric_records
    if len(records) != 1:
        raise SecAggError(f"the train handler's reply must carry one MetricRecord, it has {len(records)}")
    return dict(next(iter(records.values())))


def _identity_from_node_config(context: Context) -> tuple[bytes, list[bytes]]:
    """(signing key, trusted public keys) read from the files the node config names.

    ``secagg-identity-key``: a file holding this node's raw 32-byte Ed25519 private key;
    ``secagg-trusted-keys``: a folder of ``*.pub`` files, each one client's raw 32-byte
    Ed25519 public key (this node's own among them).
    """
    from pathlib import Path

    paths = {k: context.node_config.get(k) for k in (IDENTITY_KEY, TRUSTED_KEYS)}
    missing = [k for k, v in paths.items() if not isinstance(v, str) or not v]
    if missing:
        raise SecAggError(f"active secure aggregation needs the node config keys {', '.join(missing)} "
                          "(this node's Ed25519 key file and the folder of trusted *.pub keys)")
    try:
        key = Path(str(paths[IDENTITY_KEY])).read_bytes()
        trusted = [f.read_bytes() for f in sorted(Path(str(paths[TRUSTED_KEYS])).glob("*.pub"))]
    except OSError as exc:
        raise SecAggError(f"cannot read a secure-aggregation key file: {exc}") from None
    return key, trusted


secure_agg_mod = make_secure_agg_mod()
