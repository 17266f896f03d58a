"""Key agreement, key derivation and authenticated encryption between two clients.

X25519 gives each pair of clients a shared secret through the server without the server
learning it; HKDF-SHA256 turns that secret into either a pairwise mask seed or a channel key
(different ``info`` labels, the session id as salt, the unordered pair of ids bound in), and
AES-256-GCM encrypts the Shamir shares that travel through the server, with the round, the
session and both ids as associated data so a ciphertext cannot be replayed to another pair
or round.

Ed25519 signs what clients say: every reply carries a signature by the client's per-session
signing key (advertised in the first round; in ``active`` mode certified by its long-term
identity key), always over a digest with a purpose label (BLAKE3 for a reply's body, see
:mod:`secure_agg.wire`; SHA-256 for the short certificates) so that a 4 MB masked vector is
hashed once and no signature can be replayed for another purpose.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_agg.errors import SecAggError
from secure_agg.randomness import RandomSource

KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64


def new_private_key(rng: RandomSource) -> bytes:
    """32 random bytes usable as an X25519 private key (clamping is done by X25519 itself)."""
    return rng.bytes(KEY_BYTES)


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info``.

    Written on ``hmac.digest`` because the server derives tens of thousands of seeds per
    round and the one-shot C HMAC avoids an object per call; the tests check it against
    ``cryptography``'s HKDF.
    """
    prk = hmac.digest(salt or bytes(32), ikm, hashlib.sha256)
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hashlib.sha256)
        out += block
        counter += 1
    return out[:length]


@lru_cache(maxsize=1 << 16)
def _peer(public: bytes) -> X25519PublicKey:
    # Parsing a public key costs as much as a hash; the server reuses each one many times.
    return X25519PublicKey.from_public_bytes(public)


def _id_bytes(client_id: int) -> bytes:
    return int(client_id).to_bytes(16, "little", signed=True)


def _pair_label(u: int, v: int) -> bytes:
    lo, hi = sorted((int(u), int(v)))
    return _id_bytes(lo) + _id_bytes(hi)


class KeyAgreement:
    """One party's private key, with derivations toward any peer's public key.

    Args:
        private: The raw X25519 private key.
        session: The session id, used as the HKDF salt so keys never repeat across sessions.
    """

    def __init__(self, private: bytes, session: bytes) -> None:
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.session = session

    def _derive(self, peer_public: bytes, info: bytes) -> bytes:
        try:
            shared = self._key.exchange(_peer(bytes(peer_public)))
        except ValueError as exc:
            raise SecAggError(f"invalid X25519 public key: {exc}") from exc
        return hkdf_sha256(shared, self.session, info)

    def mask_seed(self, me: int, peer: int, peer_public: bytes) -> bytes:
        """The pairwise mask seed s_uv shared by ``me`` and ``peer`` (symmetric in the pair)."""
        return self._derive(peer_public, b"agora-secagg mask|" + _pair_label(me, peer))

    def channel_key(self, me: int, peer: int, peer_public: bytes) -> bytes:
        """The AES-256-GCM key of the channel between ``me`` and ``peer``."""
        return self._derive(peer_public, b"agora-secagg channel|" + _pair_label(me, peer))


def associated_data(session: bytes, round_name: str, sender: int, recipient: int) -> bytes:
    """What a share ciphertext is bound to: session, round, and both ids in order."""
    return b"|".join([session, round_name.encode(), _id_bytes(sender), _id_bytes(recipient)])


def encrypt(key: bytes, plaintext: bytes, aad: bytes, rng: RandomSource) -> bytes:
    """AES-256-GCM with a random 96-bit nonce prepended to the ciphertext."""
    nonce = rng.bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises SecAggError when authentication fails."""
    if len(ciphertext) < NONCE_BYTES + 16:
        raise SecAggError("ciphertext rejected: too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise SecAggError("ciphertext rejected: authentication failed (tampered, or bound to another round or pair)") from exc


def digest(label: str, *parts: bytes) -> bytes:
    """SHA-256 of a purpose label and length-prefixed parts (unambiguous for any part lengths)."""
    h = hashlib.sha256(b"agora-secagg " + label.encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def id_bytes(client_id: int) -> bytes:
    """A client id as 16 signed little-endian bytes (how ids enter hashes and ciphertexts)."""
    return _id_bytes(client_id)


def _signer(private: bytes) -> Ed25519PrivateKey:
    # Not cached: a module-level cache would keep private keys alive after their session.
    return Ed25519PrivateKey.from_private_bytes(private)


@lru_cache(maxsize=1 << 16)
def _verifier(public: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public)


def signing_public_key(private: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a raw 32-byte private key.

    Raises:
        SecAggError: ``private`` is not 32 bytes.
    """
    if not isinstance(private, bytes) or len(private) != KEY_BYTES:
        raise SecAggError(f"an Ed25519 private key must be {KEY_BYTES} raw bytes")
    return _signer(private).public_key().public_bytes_raw()


def sign(private: bytes, message_digest: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of a digest made by :func:`digest`."""
    return _signer(private).sign(message_digest)


def verify(public: bytes, signature: object, message_digest: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message_digest`` by ``public``."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES \
            or not isinstance(public, bytes) or len(public) != KEY_BYTES:
        return False
    try:
        _verifier(public).verify(signature, message_digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def commitment(session: bytes, client_id: int, secret: bytes) -> bytes:
    """H(session, id, b_u): binds a client to its self-mask seed before anyone holds a share.

    The seed is 32 uniform bytes, so the hash reveals nothing usable about it; the server
    checks a reconstructed seed against it, so corrupted shares cannot yield a wrong seed.
    """
    return digest("self-mask commitment", session, _id_bytes(client_id), secret)
