"""Runs a whole session in one process: n clients, one server, dropouts, byte and time counts.

Every message is encoded to bytes and handed over as bytes, exactly as a network transport
would, so the byte counts are what the wire carries. ``tamper`` lets tests alter a message in
flight to check that the receiver refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from secure_agg import crypto
from secure_agg.client import SecAggClient
from secure_agg.errors import SecAggError
from secure_agg.quantize import Quantization
from secure_agg.randomness import RandomSource
from secure_agg.rounds import (
    ADVERTISE_KEYS,
    CONSISTENCY_CHECK,
    MASKED_INPUT,
    ROUNDS,
    SHARE_KEYS,
    UNMASKING,
)
from secure_agg.server import SecAggServer

Tamper = Callable[[str, object, object, bytes], bytes]


@dataclass
class SimulationResult:
    """What one session produced.

    Attributes:
        aggregate: The sum of the survivors' inputs (int64 for integer inputs, float64 after
            dequantization for float inputs).
        survivors: Ids whose inputs are in the sum.
        dropped: Ids that shared keys but whose inputs are not in the sum.
        bytes_sent: Bytes each client uploaded.
        bytes_received: Bytes each client downloaded.
        client_seconds: Compute time of each client over all rounds.
        server_seconds: Compute time of the server over all rounds.
        error_bound: For float inputs, the largest possible per-entry quantization error of the
            sum (0 for integer inputs).
        discarded: Replies the server refused, with the reason.
        refused: Requests clients refused (they sent no reply), with the client's reason.
    """

    aggregate: np.ndarray
    survivors: list[int]
    dropped: list[int]
    bytes_sent: dict[int, int] = field(default_factory=dict)
    bytes_received: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    error_bound: float = 0.0
    discarded: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)

    @property
    def bytes_per_client(self) -> dict[int, int]:
        """Bytes sent plus bytes received, per client."""
        return {u: self.bytes_sent.get(u, 0) + self.bytes_received.get(u, 0) for u in self.bytes_received}


def _check_dropouts(dropouts: Mapping[str, Iterable[int]] | None, n: int) -> dict[str, set[int]]:
    result: dict[str, set[int]] = {r: set() for r in ROUNDS}
    for name, ids in (dropouts or {}).items():
        if name not in result:
            raise SecAggError(f"dropouts keys must be round names {list(ROUNDS)}, got {name!r}")
        ids = {int(u) for u in ids}
        bad = sorted(u for u in ids if not 0 <= u < n)
        if bad:
            raise SecAggError(f"dropouts[{name!r}] names clients {bad}, but ids run from 0 to {n - 1}")
        result[name] = ids
    return result


def simulate(vectors: list[np.ndarray], threshold: int, dropouts: Mapping[str, Iterable[int]] | None = None,
             neighbours: int | None = None, seed: int | None = None, quantization: Quantization | None = None,
             bits: int = 32, tamper: Tamper | None = None, active: bool = False,
             min_threshold: float | None = None, identity_keys: list[bytes] | None = None,
             early: bool | Callable[[str, int, bytes], bytes | None] = False) -> SimulationResult:
    """Securely sums ``vectors`` (client i holds ``vectors[i]``) with the four-round protocol (five with ``active``).

    Args:
        vectors: Equal-length 1-D arrays; integers in [0, (2**bits - 1) // n] so the sum cannot
            wrap, or floats together with ``quantization``.
        threshold: t of the t-of-n Shamir sharing (t <= k + 1 with ``neighbours=k``).
        dropouts: Maps a round name (``advertise_keys``, ``share_keys``, ``masked_input``,
            ``consistency_check``, ``unmasking``) to the ids that drop out before that round
            (without ``active`` there is no consistency check: those ids drop before unmasking).
        neighbours: ``None`` pairs every client with all others; an int k uses SecAgg+ with a
            random k-regular graph.
        seed: Makes keys, masks, the session id and the graph reproducible (``None``: OS randomness).
            Each client gets its own seed derived on the client side (a test hook); the server's
            seed is separate and never reaches a client.
        quantization: Required for float vectors (clip range, bits); its ``bits`` replace ``bits``.
        bits: The modulus 2**bits for integer inputs.
        tamper: Optional ``f(round, sender, recipient, data) -> data`` applied to every message.
        active: Bonawitz et al. section 4: certified keys and the consistency-check round.
        min_threshold: Every client's own minimum threshold fraction (``None``: the client
            default, 0.5, or 2/3 with ``active``).
        identity_keys: With ``active``, each client's raw Ed25519 identity private key
            (``None``: drawn from ``seed`` or the OS); the clients trust all of their public keys.
        early: Hand every reply to :meth:`SecAggServer.take` as soon as its client produces
            it, before the round's call gets them all (as a transport that delivers replies one
            by one). A callable ``f(round, sender, reply) -> bytes | None`` chooses what is
            taken instead (``None``: nothing); it gets the reply as the server receives it.

    Returns:
        A :class:`SimulationResult`.

    Raises:
        SecAggError: Bad parameters or inputs, or too many dropouts (raised before any share
            of a self-mask or key is revealed).
    """
    n = len(vectors)
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 clients, got {n}")
    arrays = [np.asarray(v) for v in vectors]
    dim = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
    for i, a in enumerate(arrays):
        if a.ndim != 1 or a.shape[0] != dim or dim < 1:
            raise SecAggError(f"vectors[{i}] has shape {a.shape}; every vector must be 1-D of the same length ({dim})")
    kinds = {a.dtype.kind for a in arrays}
    quantizer = None
    if kinds <= {"i", "u"}:
        if quantization is not None:
            raise SecAggError("quantization is for float vectors; integer vectors are summed exactly")
        limit = ((1 << bits) - 1) // n
        for i, a in enumerate(arrays):
            if a.min() < 0 or a.max() > limit:
                raise SecAggError(f"vectors[{i}] has entries outside [0, {limit}] = [0, (2**{bits} - 1) // {n}]; "
                                  "the sum could wrap modulo 2**bits (raise bits)")
        words = arrays
    elif kinds <= {"f"}:
        if quantization is None:
            raise SecAggError("float vectors need quantization=Quantization(clip=..., bits=...)")
        quantizer = quantization.for_clients(n)
        bits = quantizer.bits
        words = [quantizer.quantize(a) for a in arrays]
    else:
        raise SecAggError(f"vectors must all be integer or all be float arrays, got dtype kinds {sorted(kinds)}")
    drops = _check_dropouts(dropouts, n)

    server_clock = 0.0
    t0 = time.perf_counter()
    trusted = None
    if active:
        if identity_keys is None:
            identity_keys = [RandomSource(None if seed is None else f"{seed}-identity-{i}").bytes(crypto.KEY_BYTES)
                             for i in range(n)]
        if len(identity_keys) != n:
            raise SecAggError(f"identity_keys must hold one key per client ({n}), got {len(identity_keys)}")
        trusted = [crypto.signing_public_key(k) for k in identity_keys]
    elif identity_keys is not None:
        raise SecAggError("identity_keys are for active=True only")
    server = SecAggServer(list(range(n)), threshold, dim, bits=bits, neighbours=neighbours,
                          seed=None if seed is None else f"{seed}-server", active=active)
    server_clock += time.perf_counter() - t0
    clients = {i: SecAggClient(i, seed=None if seed is None else f"{seed}-client-{i}", min_threshold=min_threshold,
                               active=active, identity_key=identity_keys[i] if active else None,
                               trusted_keys=trusted)
               for i in range(n)}
    sent = dict.fromkeys(range(n), 0)
    received = dict.fromkeys(range(n), 0)
    clock = dict.fromkeys(range(n), 0.0)
    gone: set[int] = set()
    refused: dict[int, str] = {}

    def deliver(round_name: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        gone.update(drops[round_name])
        if round_name == UNMASKING and not active:
            gone.update(drops[CONSISTENCY_CHECK])
        replies = {}
        for u, data in requests.items():
            if u in gone:
                continue
            if tamper is not None:
                data = tamper(round_name, "server", u, data)
            received[u] += len(data)
            client = clients[u]
            start = time.perf_counter()
            try:
                if round_name == ADVERTISE_KEYS:
                    reply = client.advertise_keys(data)
                elif round_name == SHARE_KEYS:
                    reply = client.share_keys(data)
                elif round_name == MASKED_INPUT:
                    reply = client.masked_input(data, words[u])
                elif round_name == CONSISTENCY_CHECK:
                    reply = client.consistency_check(data)
                else:
                    reply = client.unmasking(data)
            except SecAggError as exc:
                # A client that refuses a request simply does not answer: the server sees a dropout.
                clock[u] += time.perf_counter() - start
                refused[u] = f"{round_name}: {exc}"
                continue
            clock[u] += time.perf_counter() - start
            if tamper is not None:
                reply = tamper(round_name, u, "server", reply)
            if early:
                taken = early(round_name, u, reply) if callable(early) else reply
                if taken is not None:
                    serve(server.take, u, taken)
            sent[u] += len(reply)
            replies[u] = reply
        return replies

    def serve(step: Callable[..., object], *args: object) -> object:
        nonlocal server_clock
        start = time.perf_counter()
        out = step(*args)
        server_clock += time.perf_counter() - start
        return out

    try:
        replies = deliver(ADVERTISE_KEYS, serve(server.advertise_keys_requests))
        replies = deliver(SHARE_KEYS, serve(server.share_keys_requests, replies))
        replies = deliver(MASKED_INPUT, serve(server.masked_input_requests, replies))
        if active:
            replies = deliver(CONSISTENCY_CHECK, serve(server.consistency_check_requests, replies))
        replies = deliver(UNMASKING, serve(server.unmasking_requests, replies))
        total = serve(server.aggregate, replies)
    except SecAggError as exc:
        if not refused:
            raise
        # Say why the clients went silent; the server alone only sees that they did.
        reasons = "; ".join(refused[u].split(": ", 1)[1] for u in sorted(refused)[:3])
        raise SecAggError(f"{exc} (clients refused requests: {reasons})") from exc

    if quantizer is not None:
        aggregate = quantizer.dequantize(total, len(server.survivors))
        bound = quantizer.error_bound(len(server.survivors))
    else:
        aggregate = np.asarray(total).astype(np.int64)
        bound = 0.0
    return SimulationResult(aggregate=aggregate, survivors=server.survivors, dropped=server.dropped,
                            bytes_sent=sent, bytes_received=received, client_seconds=clock,
                            server_seconds=server_clock, error_bound=bound, discarded=dict(server.discarded),
                            refused=refused)
