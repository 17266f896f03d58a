"""The client of Bonawitz et al.'s protocol as a state machine over encoded messages.

One method per round; each takes the server's request (bytes) and returns the reply (bytes),
signed with the client's per-session Ed25519 key. The client holds its secrets (two X25519
private keys, the signing key, the self-mask seed b_u), all drawn from its own randomness (the
OS, or a seed given on the client's side) and never from anything the server sends, plus the
Shamir shares it received. It refuses any request that would let the server learn more than
the sum: a threshold at or below its own minimum, a roster larger than announced or smaller
than t, a request for the wrong round, client or session, an unmasking request that names
fewer than t survivors, names it dropped, names clients outside its roster or asks for both
shares of one client, a second unmasking request, and, in ``active`` mode, a roster entry not
certified by a trusted identity key or an unmasking request without t valid signatures of
its holders over the same survivor set it signed. Every method raises only
:class:`SecAggError`, whatever the bytes. Every reply echoes a hash of the request it answers,
so a request altered on its way makes the server discard the reply instead of mis-summing.
Its whole state serializes to bytes (:meth:`SecAggClient.to_bytes`) so a stateless transport
such as a Flower ClientApp can keep it between messages.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import numpy as np

from secure_agg import crypto, shamir
from secure_agg.errors import SecAggError
from secure_agg.prg import MaskGenerator, reduce_mod, word_dtype
from secure_agg.randomness import RandomSource
from secure_agg.rounds import (
    ADVERTISE_KEYS,
    CONSISTENCY_CHECK,
    DONE,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASKING,
)
from secure_agg.wire import (
    SERVER,
    decode,
    encode,
    open_message,
    pack_blobs,
    seal_signed,
    unpack_blobs,
    unpack_roster,
)

SECRET_CHUNKS = len(shamir.secret_to_field(bytes(crypto.KEY_BYTES)))
# Every share ciphertext has this length: nonce, two 16-byte ids, 2 * SECRET_CHUNKS uint32, tag.
CIPHERTEXT_BYTES = crypto.NONCE_BYTES + 32 + 8 * SECRET_CHUNKS + 16
# Defaults of a client's own minimum threshold, as a fraction of its share holders: t must
# exceed it. Half in the semi-honest model; two thirds with ``active``, as Bonawitz et al. need.
MIN_THRESHOLD = 0.5
MIN_THRESHOLD_ACTIVE = 2 / 3
# The roster fields every client checks, with their widths; active mode adds the certificate.
ROSTER_KEYS = {"c_pk": crypto.KEY_BYTES, "s_pk": crypto.KEY_BYTES, "sig_pk": crypto.KEY_BYTES}
ROSTER_CERTS = {"ipk": crypto.KEY_BYTES, "cert": crypto.SIGNATURE_BYTES}


def validate_input(vector: Any, dim: int, bits: int) -> np.ndarray:
    """Checks a client's integer input before anything is masked and returns it as words.

    Raises:
        SecAggError: Not a 1-D integer array of length ``dim`` with entries in [0, 2**bits).
    """
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise SecAggError(f"input vector must have shape ({dim},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise SecAggError(f"input vector must have an integer dtype (quantize floats first), got {arr.dtype}")
    words = word_dtype(bits)
    if arr.dtype == words and bits == 8 * words.itemsize:
        return arr  # every value of the word type is in range
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << bits):
        raise SecAggError(f"input entries must lie in [0, 2**{bits}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(words)


def pair_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pairwise mask with ``peer``, -1 if it subtracts it."""
    return 1 if me < peer else -1


def _share_plaintext(sender: int, recipient: int, row: np.ndarray) -> bytes:
    # Fixed layout: both ids (16 bytes each, signed little-endian) then the field elements as uint32.
    return (sender.to_bytes(16, "little", signed=True) + recipient.to_bytes(16, "little", signed=True)
            + row.astype("<u4").tobytes())


def _read_share_plaintext(plain: bytes, sender: int, recipient: int) -> np.ndarray:
    if len(plain) != 32 + 8 * SECRET_CHUNKS:
        raise SecAggError("decrypted share has the wrong length")
    if int.from_bytes(plain[:16], "little", signed=True) != sender or \
            int.from_bytes(plain[16:32], "little", signed=True) != recipient:
        raise SecAggError("decrypted share names another pair of clients")
    row = np.frombuffer(plain[32:], dtype="<u4").astype(np.int64)
    if np.any(row >= shamir.PRIME):
        raise SecAggError("decrypted share lies outside the field")
    return row


def _rows(held: dict[int, np.ndarray], ids: list[int], part: slice) -> np.ndarray:
    if not ids:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([held[v][part] for v in ids])


def request_digest(request: bytes | bytearray | memoryview) -> bytes:
    """What a reply's ``ack`` field holds: SHA-256 of the exact request bytes it answers."""
    return hashlib.sha256(request).digest()


def certificate_digest(session: bytes, client_id: int, c_pk: bytes, s_pk: bytes, sig_pk: bytes) -> bytes:
    """What an identity key certifies in active mode: this session's three public keys of a client."""
    return crypto.digest("session keys", session, crypto.id_bytes(client_id), c_pk, s_pk, sig_pk)


def survivors_digest(session: bytes, survivors: list[int]) -> bytes:
    """What a client signs in the consistency check: the session and the sorted survivor set U3."""
    return crypto.digest("survivor set", session, np.array(sorted(survivors), dtype="<i8").tobytes())


def _int_field(msg: dict[str, Any], name: str) -> int:
    value = msg.get(name)
    if type(value) is not int:
        raise SecAggError(f"field {name!r} must be an int, got {type(value).__name__}")
    return value


def _ids_field(msg: dict[str, Any], name: str) -> list[int]:
    value = msg.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.int64:
        raise SecAggError(f"field {name!r} must be an int64 array of client ids")
    ids = value.tolist()
    if len(set(ids)) != len(ids):
        raise SecAggError(f"field {name!r} repeats a client id")
    return ids


F = TypeVar("F", bound=Callable[..., Any])


def _refuses_with_secagg_error(method: F) -> F:
    """Turns any unexpected exception inside a round into a SecAggError (the request is refused).

    The explicit checks should catch every malformed field first; this is the backstop that
    keeps a field of a surprising type from ever escaping as a TypeError. Methods change the
    client's state only after every check has passed, so a refused request changes nothing.
    """
    @functools.wraps(method)
    def wrapper(self: SecAggClient, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except SecAggError:
            raise
        except Exception as exc:
            raise SecAggError(f"client {self.id} refuses a malformed {method.__name__} request "
                              f"({type(exc).__name__}: {exc})") from exc
    return wrapper  # type: ignore[return-value]


class SecAggClient:
    """One participant.

    Args:
        client_id: This client's id (an int, unique in the session).
        seed: ``None`` (the default, and the only choice for a deployment) draws every secret
            from ``os.urandom``. An int, str or bytes makes the secrets reproducible for tests;
            it must come from the client's own side (node config, a test), never from a server
            message, and a seeded client repeats its secrets in every session it joins.
        min_threshold: The client refuses a session whose threshold t is at or below this
            fraction of its share holders (n, or k + 1 with SecAgg+), whatever the server says.
            Default 0.5, or 2/3 with ``active``.
        active: Bonawitz et al. section 4: certified keys and the consistency-check round,
            against a server that lies about who survived.
        identity_key: The client's long-term Ed25519 private key (32 raw bytes); required with
            ``active``.
        trusted_keys: The raw Ed25519 public identity keys of the legitimate clients (this
            client's included); required with ``active``.

    Raises:
        SecAggError: A bad argument (the message names it).
    """

    def __init__(self, client_id: int, *, seed: int | str | bytes | None = None, min_threshold: float | None = None,
                 active: bool = False, identity_key: bytes | None = None,
                 trusted_keys: Collection[bytes] | None = None) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, (int, np.integer)):
            raise SecAggError(f"client_id must be an int, got {type(client_id).__name__}")
        self.id = int(client_id)
        if seed is not None and not isinstance(seed, (int, str, bytes)):
            raise SecAggError(f"seed must be None, an int, a str or bytes, got {type(seed).__name__}")
        self.seed = None if seed is None else (seed if isinstance(seed, bytes) else str(seed).encode())
        self.active = bool(active)
        if min_threshold is None:
            min_threshold = MIN_THRESHOLD_ACTIVE if self.active else MIN_THRESHOLD
        if isinstance(min_threshold, bool) or not isinstance(min_threshold, (int, float)) \
                or not 0 <= float(min_threshold) < 1:
            raise SecAggError(f"min_threshold must be a fraction in [0, 1), got {min_threshold!r}")
        self.min_threshold = float(min_threshold)
        self.identity_key = b""
        self.trusted_keys: list[bytes] = []
        if self.active:
            if not isinstance(identity_key, bytes) or len(identity_key) != crypto.KEY_BYTES:
                raise SecAggError("identity_key must be a raw 32-byte Ed25519 private key when active=True")
            if trusted_keys is None or isinstance(trusted_keys, (bytes, str)) \
                    or not all(isinstance(k, bytes) and len(k) == crypto.KEY_BYTES for k in trusted_keys):
                raise SecAggError("trusted_keys must be a collection of raw 32-byte Ed25519 public keys when active=True")
            self.identity_key = identity_key
            self.trusted_keys = sorted(set(trusted_keys))
            if crypto.signing_public_key(identity_key) not in self.trusted_keys:
                raise SecAggError("trusted_keys must include this client's own identity public key")
        elif identity_key is not None or trusted_keys is not None:
            raise SecAggError("identity_key and trusted_keys are for active=True only")
        self.stage = ADVERTISE_KEYS
        self.session: bytes | None = None
        self.threshold = 0
        self.clients = 0
        self.holders = 0
        self.dim = 0
        self.bits = 0
        self.c_sk = b""
        self.s_sk = b""
        self.sig_sk = b""
        self.b = b""
        self.roster: dict[int, dict[str, Any]] = {}
        self.held: dict[int, np.ndarray] = {}
        self.channel_keys: dict[int, bytes] = {}
        self.partners: list[int] = []
        self.u3: list[int] = []

    # Each round draws from its own stream, so a seeded client is reproducible without
    # having to persist generator state between messages. Nothing the server sends enters it.
    def _rng(self, round_name: str) -> RandomSource:
        return RandomSource(self.seed, label=f"client-{self.id}-{round_name}")

    def _open(self, request: bytes, round_name: str) -> dict[str, Any]:
        if self.stage != round_name:
            raise SecAggError(f"client {self.id} refuses a {round_name!r} request: it is in round {self.stage!r}")
        return open_message(request, session=self.session, round_name=round_name, recipient=self.id, sender=SERVER)

    def _reply(self, round_name: str, request: bytes, **payload: Any) -> bytes:
        assert self.session is not None
        return seal_signed(self.sig_sk, self.session, round_name, self.id, SERVER, ack=request_digest(request), **payload)

    def _refuse(self, why: str) -> SecAggError:
        return SecAggError(f"client {self.id} refuses: {why}")

    @_refuses_with_secagg_error
    def advertise_keys(self, request: bytes) -> bytes:
        """Round 0: checks the session parameters and answers with fresh public keys.

        The request names t (``threshold``), the number of clients in the session
        (``clients``), the share holders per client (``holders``: n, or k + 1 with SecAgg+),
        ``dim``, ``bits`` and ``active``. The client refuses t at or below its own minimum.
        """
        msg = self._open(request, ADVERTISE_KEYS)
        threshold, clients, holders = (_int_field(msg, k) for k in ("threshold", "clients", "holders"))
        dim, bits = _int_field(msg, "dim"), _int_field(msg, "bits")
        if msg.get("active") is not self.active:
            raise self._refuse(f"the session's active={msg.get('active')!r} differs from this client's active={self.active}")
        if clients < 2 or not 2 <= holders <= clients:
            raise self._refuse(f"a session needs clients >= 2 and 2 <= holders <= clients, got {clients} and {holders}")
        if not 1 <= threshold <= holders:
            raise self._refuse(f"threshold {threshold} is not between 1 and the {holders} share holders")
        # The tolerance keeps float rounding (2/3 x 9) from accepting a t exactly at the minimum.
        if threshold <= self.min_threshold * holders + 1e-9:
            raise self._refuse(f"threshold {threshold} is at or below its minimum {self.min_threshold:.3g} x {holders} "
                               f"share holders (t must be at least {int(self.min_threshold * holders) + 1})")
        if dim < 1:
            raise self._refuse(f"dim must be positive, got {dim}")
        word_dtype(bits)
        rng = self._rng(ADVERTISE_KEYS)
        c_sk, s_sk, sig_sk = crypto.new_private_key(rng), crypto.new_private_key(rng), crypto.new_private_key(rng)
        session = msg["session"]
        keys = {"c_pk": crypto.public_key(c_sk), "s_pk": crypto.public_key(s_sk), "sig_pk": crypto.signing_public_key(sig_sk)}
        if self.active:
            cert = crypto.sign(self.identity_key, certificate_digest(session, self.id, keys["c_pk"], keys["s_pk"], keys["sig_pk"]))
            keys.update(ipk=crypto.signing_public_key(self.identity_key), cert=cert)
        self.session, self.threshold, self.clients, self.holders, self.dim, self.bits = (
            session, threshold, clients, holders, dim, bits)
        self.c_sk, self.s_sk, self.sig_sk = c_sk, s_sk, sig_sk
        self.stage = SHARE_KEYS
        return self._reply(ADVERTISE_KEYS, request, **keys)

    def _check_roster(self, roster: dict[int, dict[str, Any]]) -> None:
        if self.id not in roster:
            raise self._refuse("the share_keys roster does not include this client")
        if not self.threshold <= len(roster) <= self.holders:
            raise self._refuse(f"the roster has {len(roster)} share holders; it must have between the threshold "
                               f"{self.threshold} and the announced {self.holders}")
        mine = roster[self.id]
        if [mine["c_pk"], mine["s_pk"], mine["sig_pk"]] != [crypto.public_key(self.c_sk), crypto.public_key(self.s_sk),
                                                             crypto.signing_public_key(self.sig_sk)]:
            raise self._refuse("the roster carries public keys that are not this client's")
        for name in ("c_pk", "s_pk", "sig_pk", "x"):
            values = [entry[name] for entry in roster.values()]
            if len(set(values)) != len(values):
                raise self._refuse(f"the roster repeats a {name}")
        if any(not 1 <= entry["x"] < shamir.PRIME for entry in roster.values()):
            raise self._refuse("the roster has a Shamir point outside [1, p)")
        if self.active:
            trusted = set(self.trusted_keys)
            ipks = [entry["ipk"] for entry in roster.values()]
            if len(set(ipks)) != len(ipks):
                raise self._refuse("two roster entries carry the same identity key")
            for v, entry in roster.items():
                if entry["ipk"] not in trusted:
                    raise self._refuse(f"roster entry {v} has an identity key that is not trusted")
                if not crypto.verify(entry["ipk"], entry["cert"], certificate_digest(
                        self.session, v, entry["c_pk"], entry["s_pk"], entry["sig_pk"])):
                    raise self._refuse(f"roster entry {v}'s keys are not certified by its identity key")

    @_refuses_with_secagg_error
    def share_keys(self, request: bytes) -> bytes:
        """Round 1: checks the roster, Shamir-shares b_u and s_sk, encrypts one share pair per holder.

        The reply carries the commitment H(session, id, b_u), against which the server checks
        the b_u it reconstructs, so corrupted shares cannot produce a wrong self-mask.
        """
        msg = self._open(request, SHARE_KEYS)
        widths = {**ROSTER_KEYS, **(ROSTER_CERTS if self.active else {})}
        roster = unpack_roster(msg.get("roster"), widths)
        self._check_roster(roster)
        assert self.session is not None
        rng = self._rng(SHARE_KEYS)
        b = rng.bytes(crypto.KEY_BYTES)
        secrets = np.concatenate([shamir.secret_to_field(b), shamir.secret_to_field(self.s_sk)])
        holders = sorted(roster)
        shares = shamir.share(secrets, np.array([roster[v]["x"] for v in holders]), self.threshold, rng)
        channel = crypto.KeyAgreement(self.c_sk, self.session)
        ciphertexts, channel_keys, held = {}, {}, {}
        for row, v in zip(shares, holders, strict=True):
            if v == self.id:
                held[self.id] = row
                continue
            # Kept for the next round, which decrypts with the same pairwise channel key.
            key = channel_keys[v] = channel.channel_key(self.id, v, roster[v]["c_pk"])
            aad = crypto.associated_data(self.session, SHARE_KEYS, self.id, v)
            ciphertexts[v] = crypto.encrypt(key, _share_plaintext(self.id, v, row), aad, rng)
        self.roster, self.b, self.held, self.channel_keys = roster, b, held, channel_keys
        self.stage = MASKED_INPUT
        return self._reply(SHARE_KEYS, request, ciphertexts=pack_blobs(ciphertexts),
                           commit=crypto.commitment(self.session, self.id, b))

    @_refuses_with_secagg_error
    def masked_input(self, request: bytes, vector: np.ndarray, *, in_place: bool = False) -> bytes:
        """Round 2: decrypts the shares addressed to it and returns y_u = x_u + PRG(b_u) + sum of pair masks.

        ``in_place=True`` lets the client mask ``vector``'s own memory when it is a writable
        array of the session's word type (a caller that built it for this call and drops it
        after: no second 4 MB buffer per 1M words); otherwise ``vector`` is left untouched.

        The client masks with every roster member whose share ciphertext was forwarded to it
        (the pairwise seed needs only that member's public s_pk), whether or not the share
        decrypts. ``rejected`` lists the senders whose share failed authentication: it only
        means this client holds no share of them, so a false claim cannot unbalance the masks.
        """
        words = validate_input(vector, self.dim, self.bits)
        msg = self._open(request, MASKED_INPUT)
        ciphertexts = unpack_blobs(msg.get("ciphertexts"))
        strangers = sorted(v for v in ciphertexts if v == self.id or v not in self.roster)
        if strangers:
            raise self._refuse(f"the server forwards shares from {strangers}, which are not other members of its roster")
        assert self.session is not None
        held, rejected = dict(self.held), []
        for v, ct in ciphertexts.items():
            try:
                plain = crypto.decrypt(self.channel_keys[v], ct, crypto.associated_data(self.session, SHARE_KEYS, v, self.id))
                held[v] = _read_share_plaintext(plain, v, self.id)
            except SecAggError:
                rejected.append(v)
        partners = sorted(ciphertexts)
        prg = MaskGenerator(self.dim, self.bits)
        own = in_place and words is vector and words.flags.writeable and words.flags.c_contiguous
        masked = words if own else np.empty(self.dim, dtype=prg.dtype)
        masking = crypto.KeyAgreement(self.s_sk, self.session)
        streams = [(self.b, 1)] + [(masking.mask_seed(self.id, v, self.roster[v]["s_pk"]), pair_sign(self.id, v))
                                   for v in partners]
        # x and all streams in one cache-resident pass (secure_agg.prg.add_many): the same sum
        # as one copy of x and one add per stream, about 40 % less CPU at 1M words. In place,
        # x is already there; otherwise the pass writes x + masks into the fresh buffer.
        prg.add_many(masked, streams, vectors=[] if own else [words], overwrite=not own)
        reduce_mod(masked, self.bits)
        self.held, self.partners = held, partners
        self.stage = CONSISTENCY_CHECK if self.active else UNMASKING
        return self._reply(MASKED_INPUT, request, masked=masked, rejected=sorted(rejected))

    def _check_survivors(self, survivors: list[int], where: str) -> None:
        if self.id not in survivors:
            raise self._refuse(f"the {where} request does not list this client among the survivors")
        outside = sorted(set(survivors) - set(self.roster))
        # Under SecAgg+ the survivor set U3 signed in active mode names non-neighbours too.
        if outside and not (self.active and self.holders < self.clients):
            raise self._refuse(f"the {where} request names survivors {outside[:5]} outside its roster")
        count = len(set(survivors) & set(self.roster))
        if count < self.threshold:
            raise self._refuse(f"the {where} request names {count} survivors among its share holders, "
                               f"fewer than the threshold {self.threshold}")

    @_refuses_with_secagg_error
    def consistency_check(self, request: bytes) -> bytes:
        """Active mode, between masked input and unmasking: signs the survivor set U3 it is shown.

        The server later forwards these signatures; a client reveals shares only if t of its
        holders signed the same U3 it signed, so no two clients can be shown different U3.
        """
        if not self.active:
            raise self._refuse("a consistency_check request, but this client is not in active mode")
        msg = self._open(request, CONSISTENCY_CHECK)
        survivors = _ids_field(msg, "survivors")
        self._check_survivors(survivors, CONSISTENCY_CHECK)
        assert self.session is not None
        signature = crypto.sign(self.sig_sk, survivors_digest(self.session, survivors))
        self.u3 = sorted(survivors)
        self.stage = UNMASKING
        return self._reply(CONSISTENCY_CHECK, request, signature=signature)

    def _check_signatures(self, msg: dict[str, Any]) -> None:
        assert self.session is not None
        packed = msg.get("signatures")
        signers = unpack_blobs(packed)
        digest = survivors_digest(self.session, self.u3)
        for v, signature in signers.items():
            if v not in self.roster:
                raise self._refuse(f"a survivor-set signature from {v}, who is not in its roster")
            if not crypto.verify(self.roster[v]["sig_pk"], signature, digest):
                raise self._refuse(f"client {v}'s signature is not over the survivor set this client signed")
        if len(signers) < self.threshold:
            raise self._refuse(f"only {len(signers)} of its share holders signed the survivor set, fewer than "
                               f"the threshold {self.threshold}")

    @_refuses_with_secagg_error
    def unmasking(self, request: bytes) -> bytes:
        """Last round: reveals shares of b_v for survivors and of s_sk for dropped clients, never both.

        Refused unless the request names at least t survivors among its share holders, itself
        among them, only members of its roster (SecAgg+ active mode: U3 may name others), no
        client both surviving and dropped, and (active) the exact U3 it signed with t valid
        signatures of its holders over that same U3. A second unmasking request is refused.
        """
        msg = self._open(request, UNMASKING)
        survivors, dropped = _ids_field(msg, "survivors"), _ids_field(msg, "dropped")
        both = set(survivors) & set(dropped)
        if both:
            raise self._refuse(f"the server asks for both shares of clients {sorted(both)}")
        self._check_survivors(survivors, UNMASKING)
        strangers = sorted(set(dropped) - set(self.roster))
        if strangers:
            raise self._refuse(f"the unmasking request names dropped clients {strangers[:5]} outside its roster")
        if self.active:
            if sorted(survivors) != self.u3:
                raise self._refuse("the unmasking request's survivors differ from the set it signed")
            self._check_signatures(msg)
        b_ids = [v for v in sorted(survivors) if v in self.held]
        s_ids = [v for v in sorted(dropped) if v in self.held]
        self.stage = DONE
        # Shares travel as one flat array per kind: ids plus rows of SECRET_CHUNKS field elements.
        return self._reply(UNMASKING, request, b_ids=np.array(b_ids, dtype=np.int64), s_ids=np.array(s_ids, dtype=np.int64),
                           b_shares=_rows(self.held, b_ids, slice(0, SECRET_CHUNKS)),
                           s_shares=_rows(self.held, s_ids, slice(SECRET_CHUNKS, 2 * SECRET_CHUNKS)))

    _STATE = ("id", "seed", "min_threshold", "active", "identity_key", "trusted_keys", "stage", "session",
              "threshold", "clients", "holders", "dim", "bits", "c_sk", "s_sk", "sig_sk", "b", "roster", "held",
              "channel_keys", "partners", "u3")

    def to_bytes(self) -> bytes:
        """The whole client state (secrets, identity key and trust list included) for storage between messages."""
        # The wire codec has no floats; the fraction travels as its exact repr.
        return encode({name: repr(self.min_threshold) if name == "min_threshold" else getattr(self, name)
                       for name in self._STATE})

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggClient:
        """Restores a client saved with :meth:`to_bytes`.

        Raises:
            SecAggError: ``data`` is not a saved client state.
        """
        state = decode(data)
        if not isinstance(state, dict) or set(state) != set(cls._STATE):
            raise SecAggError("not a saved SecAggClient state (fields missing or unknown)")
        try:
            client = cls(state["id"], seed=state["seed"], min_threshold=float(state["min_threshold"]), active=state["active"],
                         identity_key=state["identity_key"] or None,
                         trusted_keys=state["trusted_keys"] if state["active"] else None)
            for name in cls._STATE[6:]:
                setattr(client, name, state[name])
            client.held = {int(k): np.asarray(v, dtype=np.int64) for k, v in client.held.items()}
        except SecAggError:
            raise
        except Exception as exc:
            raise SecAggError(f"not a saved SecAggClient state: {type(exc).__name__}: {exc}") from exc
        return client
