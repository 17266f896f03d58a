"""The client of Bonawitz et al.'s protocol as a state machine over encoded messages.

One method per round; each takes the server's request (bytes) and returns the reply (bytes).
The client holds its secrets (two X25519 private keys, the self-mask seed b_u) and the Shamir
shares it received, and refuses any request that would let the server learn more than the sum:
a request for the wrong round, for another client or session, or one that asks for both the
self-mask share and the key share of the same client. Its whole state serializes to bytes
(:meth:`SecAggClient.to_bytes`) so a stateless transport such as a Flower ClientApp can keep
it between messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from secure_agg import crypto, shamir
from secure_agg.errors import SecAggError
from secure_agg.prg import MaskGenerator, reduce_mod, word_dtype
from secure_agg.randomness import RandomSource
from secure_agg.rounds import ADVERTISE_KEYS, DONE, MASKED_INPUT, SHARE_KEYS, UNMASKING
from secure_agg.wire import (
    SERVER,
    decode,
    encode,
    open_message,
    pack_blobs,
    seal,
    unpack_blobs,
    unpack_roster,
)

SECRET_CHUNKS = len(shamir.secret_to_field(bytes(crypto.KEY_BYTES)))
# Every share ciphertext has this length: nonce, two 16-byte ids, 2 * SECRET_CHUNKS uint32, tag.
CIPHERTEXT_BYTES = crypto.NONCE_BYTES + 32 + 8 * SECRET_CHUNKS + 16


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


class SecAggClient:
    """One participant.

    Args:
        client_id: This client's id (an int, unique in the session).
        seed: ``None`` draws every secret from the OS; anything else makes them reproducible.
    """

    def __init__(self, client_id: int, seed: int | str | bytes | None = None) -> None:
        self.id = int(client_id)
        self.seed = None if seed is None else (seed if isinstance(seed, bytes) else str(seed).encode())
        self.stage = ADVERTISE_KEYS
        self.session: bytes | None = None
        self.threshold = 0
        self.dim = 0
        self.bits = 0
        self.c_sk = b""
        self.s_sk = b""
        self.b = b""
        self.roster: dict[int, list[Any]] = {}
        self.held: dict[int, np.ndarray] = {}
        self.channel_keys: dict[int, bytes] = {}

    # Each round draws from its own stream, so a seeded client is reproducible without
    # having to persist generator state between messages.
    def _rng(self, round_name: str) -> RandomSource:
        return RandomSource(self.seed, label=f"client-{self.id}-{round_name}")

    def _open(self, request: bytes, round_name: str) -> dict[str, Any]:
        if self.stage != round_name:
            raise SecAggError(f"client {self.id} refuses a {round_name!r} request: it is in round {self.stage!r}")
        return open_message(request, session=self.session, round_name=round_name, recipient=self.id, sender=SERVER)

    def _reply(self, round_name: str, **payload: Any) -> bytes:
        return seal(self.session, round_name, self.id, SERVER, **payload)

    def advertise_keys(self, request: bytes) -> bytes:
        """Round 0: learns the session parameters and answers with two fresh public keys."""
        msg = self._open(request, ADVERTISE_KEYS)
        threshold, dim, bits = msg.get("threshold"), msg.get("dim"), msg.get("bits")
        if not all(isinstance(v, int) for v in (threshold, dim, bits)):
            raise SecAggError("advertise_keys request lacks integer threshold, dim and bits")
        if threshold < 1 or dim < 1:
            raise SecAggError(f"threshold and dim must be positive, got {threshold} and {dim}")
        word_dtype(bits)
        self.session, self.threshold, self.dim, self.bits = msg["session"], threshold, dim, bits
        rng = self._rng(ADVERTISE_KEYS)
        self.c_sk, self.s_sk = crypto.new_private_key(rng), crypto.new_private_key(rng)
        self.stage = SHARE_KEYS
        return self._reply(ADVERTISE_KEYS, c_pk=crypto.public_key(self.c_sk), s_pk=crypto.public_key(self.s_sk))

    def share_keys(self, request: bytes) -> bytes:
        """Round 1: checks the roster, Shamir-shares b_u and s_sk, encrypts one share pair per holder."""
        msg = self._open(request, SHARE_KEYS)
        roster = unpack_roster(msg.get("roster"), crypto.KEY_BYTES)
        if self.id not in roster:
            raise SecAggError(f"client {self.id}: the share_keys roster does not include this client")
        if len(roster) < self.threshold:
            raise SecAggError(f"client {self.id}: only {len(roster)} share holders, fewer than the threshold {self.threshold}")
        if list(roster[self.id][1:]) != [crypto.public_key(self.c_sk), crypto.public_key(self.s_sk)]:
            raise SecAggError(f"client {self.id}: the roster carries public keys that are not this client's")
        keys = [k for entry in roster.values() for k in entry[1:]]
        xs = [entry[0] for entry in roster.values()]
        if len(set(keys)) != len(keys) or len(set(xs)) != len(xs):
            raise SecAggError(f"client {self.id}: the roster repeats a public key or a Shamir point")
        self.roster = {v: list(entry) for v, entry in roster.items()}
        rng = self._rng(SHARE_KEYS)
        self.b = rng.bytes(crypto.KEY_BYTES)
        secrets = np.concatenate([shamir.secret_to_field(self.b), shamir.secret_to_field(self.s_sk)])
        holders = list(self.roster)
        shares = shamir.share(secrets, np.array([self.roster[v][0] for v in holders]), self.threshold, rng)
        channel = crypto.KeyAgreement(self.c_sk, self.session)
        ciphertexts = {}
        self.channel_keys = {}
        for row, v in zip(shares, holders, strict=True):
            if v == self.id:
                self.held = {self.id: row}
                continue
            plaintext = _share_plaintext(self.id, v, row)
            # Kept for the next round, which decrypts with the same pairwise channel key.
            key = self.channel_keys[v] = channel.channel_key(self.id, v, self.roster[v][1])
            aad = crypto.associated_data(self.session, SHARE_KEYS, self.id, v)
            ciphertexts[v] = crypto.encrypt(key, plaintext, aad, rng)
        self.stage = MASKED_INPUT
        return self._reply(SHARE_KEYS, ciphertexts=pack_blobs(ciphertexts))

    def masked_input(self, request: bytes, vector: np.ndarray) -> bytes:
        """Round 2: decrypts the shares addressed to it and returns y_u = x_u + PRG(b_u) + sum of pair masks.

        A ciphertext that fails authentication is refused; its sender is reported in
        ``rejected`` and left out of this client's masks, and the server treats it as dropped.
        """
        words = validate_input(vector, self.dim, self.bits)
        msg = self._open(request, MASKED_INPUT)
        ciphertexts = unpack_blobs(msg.get("ciphertexts"))
        partners, rejected = [], []
        for v, ct in ciphertexts.items():
            if v == self.id or v not in self.channel_keys:
                rejected.append(v)
                continue
            try:
                plain = crypto.decrypt(self.channel_keys[v], ct, crypto.associated_data(self.session, SHARE_KEYS, v, self.id))
                row = _read_share_plaintext(plain, v, self.id)
            except SecAggError:
                rejected.append(v)
                continue
            self.held[v] = row
            partners.append(v)
        prg = MaskGenerator(self.dim, self.bits)
        masked = words.copy()
        prg.add(masked, self.b)
        masking = crypto.KeyAgreement(self.s_sk, self.session)
        for v in partners:
            prg.add(masked, masking.mask_seed(self.id, v, self.roster[v][2]), pair_sign(self.id, v))
        reduce_mod(masked, self.bits)
        self.stage = UNMASKING
        return self._reply(MASKED_INPUT, masked=masked, rejected=sorted(rejected))

    def unmasking(self, request: bytes) -> bytes:
        """Round 3: reveals shares of b_v for survivors and of s_sk for dropped clients, never both."""
        msg = self._open(request, UNMASKING)
        survivors, dropped = msg.get("survivors"), msg.get("dropped")
        if not isinstance(survivors, np.ndarray) or not isinstance(dropped, np.ndarray):
            raise SecAggError("unmasking request lacks the survivor and dropped id arrays")
        survivors, dropped = survivors.tolist(), dropped.tolist()
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggError(f"client {self.id} refuses to unmask: the server asks for both shares of clients {sorted(both)}")
        if self.id not in survivors:
            raise SecAggError(f"client {self.id} refuses to unmask: it is not listed among the survivors")
        if len(survivors) < 1 or len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise SecAggError(f"client {self.id} refuses to unmask: the survivor or dropped list repeats an id")
        b_ids = [v for v in survivors if v in self.held]
        s_ids = [v for v in dropped if v in self.held]
        self.stage = DONE
        # Shares travel as one flat array per kind: ids plus rows of SECRET_CHUNKS field elements.
        return self._reply(UNMASKING, b_ids=np.array(b_ids, dtype=np.int64), s_ids=np.array(s_ids, dtype=np.int64),
                           b_shares=_rows(self.held, b_ids, slice(0, SECRET_CHUNKS)),
                           s_shares=_rows(self.held, s_ids, slice(SECRET_CHUNKS, 2 * SECRET_CHUNKS)))

    def to_bytes(self) -> bytes:
        """The whole client state (including secrets) for storage between messages."""
        return encode({"id": self.id, "seed": self.seed, "stage": self.stage, "session": self.session,
                       "threshold": self.threshold, "dim": self.dim, "bits": self.bits, "c_sk": self.c_sk,
                       "s_sk": self.s_sk, "b": self.b, "roster": self.roster, "held": self.held,
                       "channel_keys": self.channel_keys})

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggClient:
        """Restores a client saved with :meth:`to_bytes`."""
        state = decode(data)
        client = cls(state["id"])
        for key, value in state.items():
            setattr(client, key, value)
        client.held = {int(k): np.asarray(v, dtype=np.int64) for k, v in client.held.items()}
        return client
