"""Faults and refusals: tampering, replays, misaddressing, greedy unmasking requests, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg import MASKED_INPUT, SecAggClient, SecAggError, SecAggServer, simulate
from secure_agg.client import CIPHERTEXT_BYTES
from secure_agg.wire import decode, encode, seal, seal_signed


def _session(n: int = 4, t: int = 3, dim: int = 5):
    server = SecAggServer(list(range(n)), t, dim, seed=0)
    clients = {u: SecAggClient(u, seed=u) for u in range(n)}
    vectors = {u: np.arange(dim) * (u + 1) for u in range(n)}
    return server, clients, vectors


def _run_to_unmasking(server, clients, vectors):
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    unmask = server.unmasking_requests({u: clients[u].masked_input(m, vectors[u]) for u, m in masked.items()})
    return adv, share, masked, unmask


def resign(client: SecAggClient, reply: bytes, **changes) -> bytes:
    """What a malicious client sends: its own reply with fields changed, validly signed."""
    msg = decode(reply[:-64])
    env = [msg.pop(k) for k in ("session", "round", "sender", "recipient")]
    msg.update(changes)
    return seal_signed(client.sig_sk, *env, **msg)


def test_tampered_ciphertext_drops_its_sender() -> None:
    # Client 0 sends client 2 a share that fails authentication (and signs the reply itself).
    server, clients, vectors = _session(n=5, t=3, dim=6)
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    replies = {u: clients[u].share_keys(m) for u, m in share.items()}
    cts = decode(replies[0][:-64])["ciphertexts"]
    raw = bytearray(cts["data"])
    raw[list(cts["ids"]).index(2) * CIPHERTEXT_BYTES + 20] ^= 1
    replies[0] = resign(clients[0], replies[0], ciphertexts={**cts, "data": bytes(raw)})
    masked = server.masked_input_requests(replies)
    unmask = server.unmasking_requests({u: clients[u].masked_input(m, vectors[u]) for u, m in masked.items()})
    assert server.dropped == [0] and server.survivors == [1, 2, 3, 4]
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, np.sum([vectors[u] for u in range(1, 5)], axis=0))


def test_request_altered_in_transit_drops_its_recipient() -> None:
    def flip(round_name, sender, recipient, data):
        if round_name == MASKED_INPUT and recipient == 2:
            msg = decode(data)
            raw = bytearray(msg["ciphertexts"]["data"])
            raw[20] ^= 1  # inside the first forwarded ciphertext, which is client 0's
            msg["ciphertexts"]["data"] = bytes(raw)
            return encode(msg)
        return data

    # Client 2 answers, but its reply acknowledges a request the server never sent.
    vectors = [np.arange(6) + 10 * u for u in range(5)]
    result = simulate(vectors, 3, seed=5, tamper=flip)
    assert result.dropped == [2]
    assert "another request" in result.discarded[2]
    assert np.array_equal(result.aggregate, np.sum([vectors[u] for u in (0, 1, 3, 4)], axis=0))


def test_replayed_and_misaddressed_messages_are_refused() -> None:
    server, clients, vectors = _session()
    adv, share, masked, unmask = _run_to_unmasking(server, clients, vectors)
    fresh = SecAggClient(0, seed=0)
    with pytest.raises(SecAggError, match="round"):
        fresh.share_keys(share[0])  # a share_keys message before advertise_keys
    fresh.advertise_keys(adv[0])
    with pytest.raises(SecAggError, match="addressed to 1"):
        fresh.share_keys(share[1])  # addressed to another client
    with pytest.raises(SecAggError, match="round"):
        clients[0].unmasking(masked[0])  # replay of an earlier round's message
    other = SecAggServer(list(range(4)), 3, 5, seed=99)
    with pytest.raises(SecAggError, match="another session"):
        clients[0].unmasking(seal(other.session, "unmasking", "server", 0,
                                  survivors=np.arange(4), dropped=np.zeros(0, dtype=np.int64)))
    replies = {u: clients[u].unmasking(m) for u, m in unmask.items()}
    with pytest.raises(SecAggError, match="round"):
        clients[0].unmasking(unmask[0])  # a second unmasking request is refused
    # The server refuses a reply passed off as another client's and counts that client as missing.
    forged = {0: replies[0], 1: replies[1], 3: replies[2]}
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        server.aggregate(forged)
    assert "claims sender 2" in server.discarded[3]


def test_server_never_asks_for_both_shares_and_clients_refuse_it() -> None:
    server, clients, vectors = _session(n=5, t=3)
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    replies = {u: clients[u].masked_input(m, vectors[u]) for u, m in masked.items() if u != 4}
    unmask = server.unmasking_requests(replies)
    asked_b, asked_s = set(), set()
    for data in unmask.values():
        msg = decode(data)
        asked_b |= set(msg["survivors"].tolist())
        asked_s |= set(msg["dropped"].tolist())
    assert asked_s == {4} and asked_b == {0, 1, 2, 3}
    greedy = seal(server.session, "unmasking", "server", 0, survivors=np.array([0, 1, 4]), dropped=np.array([4]))
    with pytest.raises(SecAggError, match=r"both shares of clients \[4\]"):
        clients[0].unmasking(greedy)
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, np.sum([vectors[u] for u in range(4)], axis=0))


def test_wrong_length_or_dtype_rejected_before_masking() -> None:
    server, clients, vectors = _session()
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    for bad, match in ((np.arange(4), "shape"), (np.ones(5), "integer dtype"), (np.full(5, -1), r"\[0, 2\*\*32\)")):
        with pytest.raises(SecAggError, match=match):
            clients[0].masked_input(masked[0], bad)
        assert clients[0].stage == MASKED_INPUT  # nothing was masked or sent


def test_client_state_survives_serialization() -> None:
    server, clients, vectors = _session()
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    clients = {u: SecAggClient.from_bytes(c.to_bytes()) for u, c in clients.items()}
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    clients = {u: SecAggClient.from_bytes(c.to_bytes()) for u, c in clients.items()}
    unmask = server.unmasking_requests({u: clients[u].masked_input(m, vectors[u]) for u, m in masked.items()})
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, np.sum(list(vectors.values()), axis=0))


def test_active_client_state_survives_serialization_between_every_round() -> None:
    from secure_agg import crypto

    keys = [bytes([u + 1]) * 32 for u in range(4)]
    trusted = [crypto.signing_public_key(k) for k in keys]
    server = SecAggServer(list(range(4)), 3, 5, seed=0, active=True)
    clients = {u: SecAggClient(u, seed=u, active=True, identity_key=keys[u], trusted_keys=trusted) for u in range(4)}
    vectors = {u: np.arange(5) * (u + 1) for u in range(4)}

    def step(name, requests, *args):
        restored = {u: SecAggClient.from_bytes(clients[u].to_bytes()) for u in requests}
        clients.update(restored)
        return {u: getattr(clients[u], name)(m, *(a[u] for a in args)) for u, m in requests.items()}

    replies = step("advertise_keys", server.advertise_keys_requests())
    replies = step("share_keys", server.share_keys_requests(replies))
    replies = step("masked_input", server.masked_input_requests(replies), vectors)
    replies = step("consistency_check", server.consistency_check_requests(replies))
    replies = step("unmasking", server.unmasking_requests(replies))
    assert clients[0].active and clients[0].min_threshold == 2 / 3 and clients[0].trusted_keys == sorted(trusted)
    assert np.array_equal(server.aggregate(replies), np.sum(list(vectors.values()), axis=0))


def test_masking_in_place_sends_the_same_reply_and_only_touches_an_owned_vector() -> None:
    server, clients, vectors = _session(n=4, t=3, dim=70_001)
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    state = clients[0].to_bytes()
    words = np.arange(70_001, dtype=np.uint32) * 7
    reference = SecAggClient.from_bytes(state).masked_input(masked[0], words)
    assert words.tolist() == (np.arange(70_001, dtype=np.uint32) * 7).tolist()  # left untouched by default
    owned = words.copy()
    assert SecAggClient.from_bytes(state).masked_input(masked[0], owned, in_place=True) == reference
    assert not np.array_equal(owned, words)  # masked in its own memory
    frozen = words.copy()
    frozen.flags.writeable = False
    assert SecAggClient.from_bytes(state).masked_input(masked[0], frozen, in_place=True) == reference
    int64 = words.astype(np.int64)  # not the word type: converted, the caller's array is kept
    assert SecAggClient.from_bytes(state).masked_input(masked[0], int64, in_place=True) == reference
    assert int64.tolist() == words.tolist()
