"""Each security guarantee of issue #12 (points 1-5) next to an attack that tries to break it.

The attacker is the server (it sees and may rewrite every message it routes), sometimes with
clients that collude with it. Every test checks behaviour against a reference: the plain sum of
the honest inputs, the exact input the attack tries to recover, or a refusal naming the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg import (
    CONSISTENCY_CHECK,
    MASKED_INPUT,
    UNMASKING,
    SecAggClient,
    SecAggError,
    SecAggServer,
    crypto,
    shamir,
    simulate,
)
from secure_agg.client import SECRET_CHUNKS, certificate_digest, pair_sign, survivors_digest
from secure_agg.prg import MaskGenerator
from secure_agg.randomness import RandomSource
from secure_agg.wire import decode, encode, pack_blobs, pack_roster, seal, seal_signed

DIM = 8


def body(reply: bytes) -> dict:
    """A signed reply's fields (the last 64 bytes are the signature)."""
    return decode(reply[:-64])


def resign(client: SecAggClient, reply: bytes, **changes) -> bytes:
    """What a malicious client sends: its own reply with fields changed, validly signed by it."""
    msg = body(reply)
    env = [msg.pop(k) for k in ("session", "round", "sender", "recipient")]
    msg.update(changes)
    return seal_signed(client.sig_sk, *env, **msg)


def identities(n: int) -> tuple[list[bytes], list[bytes]]:
    keys = [RandomSource(f"identity-{i}").bytes(32) for i in range(n)]
    return keys, [crypto.signing_public_key(k) for k in keys]


def session(n: int, t: int, *, active: bool = False, seed: int = 0, neighbours: int | None = None):
    """A server, n clients (seeded on their own side) and their integer inputs."""
    keys, trusted = identities(n) if active else ([None] * n, None)
    server = SecAggServer(list(range(n)), t, DIM, seed=seed, active=active, neighbours=neighbours)
    clients = {u: SecAggClient(u, seed=f"c{u}-{seed}", active=active, identity_key=keys[u], trusted_keys=trusted)
               for u in range(n)}
    vectors = {u: np.arange(DIM, dtype=np.int64) * (u + 1) + 1000 * u for u in range(n)}
    return server, clients, vectors


def to_masked(server, clients, vectors):
    """Runs the first three rounds honestly; returns the masked-input requests' replies."""
    adv = server.advertise_keys_requests()
    share = server.share_keys_requests({u: clients[u].advertise_keys(m) for u, m in adv.items()})
    masked = server.masked_input_requests({u: clients[u].share_keys(m) for u, m in share.items()})
    return {u: clients[u].masked_input(m, vectors[u]) for u, m in masked.items()}


def plain_sum(vectors, ids) -> np.ndarray:
    return np.sum([vectors[u] for u in ids], axis=0) % 2**32


def copy(client: SecAggClient) -> SecAggClient:
    return SecAggClient.from_bytes(client.to_bytes())


def strip_input(y: np.ndarray, b: bytes, s_sk: bytes, me: int, session_id: bytes, s_pks: dict[int, bytes]) -> np.ndarray:
    """y minus PRG(b) minus every pair mask computed with s_sk: the input, if b and s_sk are right."""
    prg = MaskGenerator(DIM, 32)
    x = y.copy()
    prg.add(x, b, -1)
    agreement = crypto.KeyAgreement(s_sk, session_id)
    for v, pk in s_pks.items():
        prg.add(x, agreement.mask_seed(me, v, pk), -pair_sign(me, v))
    return x


# --- 1. Client secrets never come from the server --------------------------------------------

def test_a_server_that_knows_everything_it_sent_cannot_recompute_client_secrets() -> None:
    server, _, vectors = session(5, 3, seed=7)
    real = {u: SecAggClient(u) for u in range(5)}  # seed=None: os.urandom, as deployed
    adv = server.advertise_keys_requests()
    replies = {u: real[u].advertise_keys(m) for u, m in adv.items()}
    # The attacker replays its own requests into clients seeded with everything it knows.
    guesses = [None, 7, "7-server", server.session, b""]
    for guess in guesses:
        replica = SecAggClient(0, seed=guess)
        mine = body(replica.advertise_keys(adv[0]))
        assert mine["s_pk"] != body(replies[0])["s_pk"] and mine["c_pk"] != body(replies[0])["c_pk"]
    # Two unseeded clients given the same request draw different secrets.
    twin = SecAggClient(0)
    twin.advertise_keys(adv[0])
    assert twin.s_sk != real[0].s_sk and twin.c_sk != real[0].c_sk
    # Run the session on; the replica's self mask and pair masks do not unmask client 0's input.
    share = server.share_keys_requests(replies)
    shared = {u: real[u].share_keys(m) for u, m in share.items()}
    masked = server.masked_input_requests(shared)
    y0 = body(real[0].masked_input(masked[0], vectors[0]))["masked"]
    replica = SecAggClient(0, seed=7)
    replica.advertise_keys(adv[0])
    roster = {v: body(replies[v])["s_pk"] for v in range(1, 5)}
    guess = strip_input(y0, RandomSource(7).bytes(32), replica.s_sk, 0, server.session, roster)
    assert not np.array_equal(guess, vectors[0])
    # The reference: with the real secrets the same computation does recover it.
    assert np.array_equal(strip_input(y0, real[0].b, real[0].s_sk, 0, server.session, roster), vectors[0])
    assert crypto.commitment(server.session, 0, real[0].b) == body(shared[0])["commit"]


# --- 2. Clients enforce their own minimum threshold --------------------------------------------

def test_every_client_refuses_a_threshold_of_one_and_nothing_leaks() -> None:
    server, clients, _ = session(5, 1)
    for u, request in server.advertise_keys_requests().items():
        with pytest.raises(SecAggError, match=r"threshold 1 is at or below its minimum 0.5 x 5 .*at least 3"):
            clients[u].advertise_keys(request)
        assert clients[u].stage == "advertise_keys" and clients[u].session is None and clients[u].s_sk == b""
    seen = []
    with pytest.raises(SecAggError, match="only 0 clients remain after advertise_keys"):
        simulate([np.arange(4)] * 5, 1, seed=0, tamper=lambda r, s, d, data: seen.append(s) or data)
    assert set(seen) == {"server"}  # no client ever sent a byte


@pytest.mark.parametrize(("active", "n", "refused", "accepted"), [(False, 10, 5, 6), (True, 10, 6, 7), (False, 7, 3, 4)])
def test_minimum_threshold_defaults(active: bool, n: int, refused: int, accepted: int) -> None:
    for t, ok in ((refused, False), (accepted, True)):
        server, clients, _ = session(n, t, active=active)
        request = server.advertise_keys_requests()[0]
        if ok:
            clients[0].advertise_keys(request)
        else:
            with pytest.raises(SecAggError, match=f"threshold {t} is at or below"):
                clients[0].advertise_keys(request)
    # A client may demand more than the default, never less than nothing.
    server, _, _ = session(5, 4)
    with pytest.raises(SecAggError, match="threshold 4 is at or below its minimum 0.8"):
        SecAggClient(0, min_threshold=0.8).advertise_keys(server.advertise_keys_requests()[0])
    with pytest.raises(SecAggError, match="min_threshold"):
        SecAggClient(0, min_threshold=1.0)


def test_secagg_plus_minimum_is_relative_to_the_holder_set() -> None:
    # k = 4: five share holders per client, so t = 2 is refused and t = 3 accepted.
    server, clients, _ = session(12, 2, neighbours=4)
    with pytest.raises(SecAggError, match="0.5 x 5 share holders"):
        clients[0].advertise_keys(server.advertise_keys_requests()[0])
    server, clients, _ = session(12, 3, neighbours=4)
    clients[0].advertise_keys(server.advertise_keys_requests()[0])


def test_a_roster_larger_than_announced_or_smaller_than_t_is_refused() -> None:
    # The server announces SecAgg+ with 3 holders (t = 2 is then allowed) ...
    server, clients, _ = session(6, 2, neighbours=2)
    adv = server.advertise_keys_requests()
    replies = {u: clients[u].advertise_keys(m) for u, m in adv.items()}
    keys = {u: body(r) for u, r in replies.items()}

    def roster_request(members):
        roster = pack_roster({v: v + 1 for v in members},
                             {k: {v: keys[v][k] for v in members} for k in ("c_pk", "s_pk", "sig_pk")})
        return seal(server.session, "share_keys", "server", 0, roster=roster)

    # ... then sends all six clients as holders: with t = 2 of 6, two colluders would suffice.
    for attempt in (copy(clients[0]), copy(clients[0])):
        with pytest.raises(SecAggError, match="must have between the threshold 2 and the announced 3"):
            attempt.share_keys(roster_request(range(6)))
    server, clients, _ = session(6, 4)
    adv = server.advertise_keys_requests()
    keys = {u: body(clients[u].advertise_keys(m)) for u, m in adv.items()}
    with pytest.raises(SecAggError, match="roster has 3 share holders"):
        clients[0].share_keys(roster_request([0, 1, 2]))


# --- 3. Unmasking requests are checked; the split-view attack --------------------------------

def test_bad_unmasking_requests_are_refused() -> None:
    server, clients, vectors = session(6, 4)
    masked_replies = to_masked(server, clients, vectors)
    unmask = server.unmasking_requests(masked_replies)
    sid = server.session

    def ask(survivors, dropped):
        return seal(sid, "unmasking", "server", 0, survivors=np.array(survivors, dtype=np.int64),
                    dropped=np.array(dropped, dtype=np.int64))

    cases = [
        (ask([0, 1, 2], [3, 4, 5]), "names 3 survivors among its share holders, fewer than the threshold 4"),
        (ask([1, 2, 3, 4, 5], [0]), "both shares of clients|does not list this client"),
        (ask([1, 2, 3, 4, 5], []), "does not list this client among the survivors"),
        (ask([0, 1, 2, 3, 9], []), r"survivors \[9\] outside its roster"),
        (ask([0, 1, 2, 3], [4, 17]), r"dropped clients \[17\] outside its roster"),
        (ask([0, 1, 2, 3, 4], [4]), r"both shares of clients \[4\]"),
        (ask([0, 1, 1, 2, 3], []), "repeats a client id"),
        (seal(sid, "unmasking", "server", 0, survivors=[0, 1, 2, 3], dropped=np.zeros(0, dtype=np.int64)),
         "int64 array"),
    ]
    for request, reason in cases:
        with pytest.raises(SecAggError, match=reason):
            copy(clients[0]).unmasking(request)
    clients[0].unmasking(unmask[0])
    with pytest.raises(SecAggError, match="is in round 'done'"):
        clients[0].unmasking(ask([0, 1, 2, 3], [4, 5]))  # a second, conflicting request


def split_view(active: bool, t: int, corrupt: set[int], side_a: list[int], side_b: list[int]):
    """The server tells side A that client 0 survived and side B that it dropped.

    ``corrupt`` clients collude with the server: they sign both views and hand over the
    shares they hold directly. Returns how many shares of b_0 and of s_sk_0 the server
    collected, the input it recovers if it has t of each (else None), and client 0's input.
    """
    n = 10
    server, clients, vectors = session(n, t, active=active)
    masked_replies = to_masked(server, clients, vectors)
    y0 = body(masked_replies[0])["masked"]
    sid = server.session
    views = {"a": list(range(n)), "b": list(range(1, n))}
    honest = {"a": list(side_a), "b": list(side_b)}
    signatures: dict[str, dict[int, bytes]] = {"a": {}, "b": {}}
    if active:
        for side in "ab":
            for u in corrupt:
                signatures[side][u] = crypto.sign(clients[u].sig_sk, survivors_digest(sid, views[side]))
            for u in honest[side]:
                request = seal(sid, CONSISTENCY_CHECK, "server", u, survivors=np.array(views[side], dtype=np.int64))
                signatures[side][u] = body(clients[u].consistency_check(request))["signature"]
    part = {"a": slice(0, SECRET_CHUNKS), "b": slice(SECRET_CHUNKS, 2 * SECRET_CHUNKS)}
    shares = {side: [(u + 1, clients[u].held[0][part[side]]) for u in sorted(corrupt)] for side in "ab"}
    for side in "ab":
        dropped = [] if side == "a" else [0]
        for u in honest[side]:
            extra = {"signatures": pack_blobs(signatures[side])} if active else {}
            request = seal(sid, "unmasking", "server", u, survivors=np.array(views[side], dtype=np.int64),
                           dropped=np.array(dropped, dtype=np.int64), **extra)
            try:
                reply = body(clients[u].unmasking(request))
            except SecAggError:
                continue
            ids, rows = (reply["b_ids"], reply["b_shares"]) if side == "a" else (reply["s_ids"], reply["s_shares"])
            rows = rows.reshape(-1, SECRET_CHUNKS)
            if 0 in ids.tolist():
                shares[side].append((u + 1, rows[ids.tolist().index(0)]))
    counts = (len(shares["a"]), len(shares["b"]))
    if min(counts) < t:
        return counts, None, vectors[0]
    secret = {}
    for side in "ab":
        xs, ys = zip(*shares[side][:t], strict=True)
        secret[side] = shamir.field_to_secret(shamir.reconstruct(list(xs), np.stack(ys), t), 32)
    s_pks = {v: server.keys[v]["s_pk"] for v in range(1, n)}
    return counts, strip_input(y0, secret["a"], secret["b"], 0, sid, s_pks), vectors[0]


def test_split_view_recovers_an_input_in_semi_honest_mode() -> None:
    # The documented limit: t = 6 of 10 is what the semi-honest minimum accepts, and a server
    # colluding with two clients (or enrolling two sybils: nothing authenticates them in this
    # mode) gets 6 shares of each of client 0's secrets and with them its input, exactly.
    counts, recovered, truth = split_view(False, 6, {8, 9}, [0, 1, 2, 3], [4, 5, 6, 7])
    assert counts == (6, 6)
    assert np.array_equal(recovered, truth)


def test_split_view_fails_in_active_mode() -> None:
    # Same attack, same two colluders, t = 7 (the active minimum): the clients shown "0 dropped"
    # see only 6 signatures over their survivor set and reveal nothing; the server never holds
    # t shares of s_sk_0. The split is the one most favourable to the attacker.
    counts, recovered, _ = split_view(True, 7, {8, 9}, [0, 1, 2, 3, 4], [5, 6, 7])
    assert counts == (7, 2) and recovered is None
    counts, recovered, _ = split_view(True, 7, {8, 9}, [0, 1, 2, 3], [4, 5, 6, 7])
    assert counts == (2, 2) and recovered is None


def test_consistency_check_refuses_wrong_forged_duplicate_or_too_few_signatures() -> None:
    server, clients, vectors = session(7, 5, active=True)
    replies = to_masked(server, clients, vectors)
    check = server.consistency_check_requests(replies)
    signed = {u: clients[u].consistency_check(m) for u, m in check.items()}
    unmask = server.unmasking_requests(signed)
    sid, u3 = server.session, np.arange(7, dtype=np.int64)
    sigs = {u: body(r)["signature"] for u, r in signed.items()}
    other_view = crypto.sign(clients[1].sig_sk, survivors_digest(sid, [1, 2, 3, 4, 5, 6]))
    outsider = crypto.sign(RandomSource(5).bytes(32), survivors_digest(sid, list(range(7))))

    def ask(signatures, survivors=u3):
        return seal(sid, "unmasking", "server", 0, survivors=survivors, dropped=np.zeros(0, dtype=np.int64),
                    signatures=pack_blobs(signatures))

    cases = [
        (ask({**sigs, 1: other_view}), "client 1's signature is not over the survivor set"),
        (ask({**sigs, 2: outsider}), "client 2's signature is not over"),
        (ask({u: sigs[u] for u in range(4)}), "only 4 of its share holders signed"),
        (ask({**sigs, 9: sigs[1]}), "from 9, who is not in its roster"),
        (ask(sigs, survivors=np.arange(6, dtype=np.int64)), "survivors differ from the set it signed"),
    ]
    for request, reason in cases:
        with pytest.raises(SecAggError, match=reason):
            copy(clients[0]).unmasking(request)
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, plain_sum(vectors, range(7)))


def test_active_clients_refuse_uncertified_or_untrusted_roster_entries() -> None:
    server, clients, _ = session(4, 3, active=True)
    adv = server.advertise_keys_requests()
    keys = {u: body(clients[u].advertise_keys(m)) for u, m in adv.items()}
    names = ("c_pk", "s_pk", "sig_pk", "ipk", "cert")

    def roster_request(entries):
        return seal(server.session, "share_keys", "server", 0,
                    roster=pack_roster({v: v + 1 for v in entries}, {k: {v: entries[v][k] for v in entries} for k in names}))

    # The server swaps in a sybil's keys for client 3, certified by an identity nobody trusts.
    sybil_id = RandomSource("sybil").bytes(32)
    sybil = {k: RandomSource(f"s{k}").bytes(32) for k in ("c_pk", "s_pk", "sig_pk")}
    sybil["c_pk"], sybil["s_pk"] = crypto.public_key(sybil["c_pk"]), crypto.public_key(sybil["s_pk"])
    sybil["ipk"] = crypto.signing_public_key(sybil_id)
    sybil["cert"] = crypto.sign(sybil_id, certificate_digest(server.session, 3, sybil["c_pk"], sybil["s_pk"], sybil["sig_pk"]))
    with pytest.raises(SecAggError, match="roster entry 3 has an identity key that is not trusted"):
        copy(clients[0]).share_keys(roster_request({**keys, 3: sybil}))
    # Client 2's real identity, but keys it never certified.
    forged = {**keys[2], "s_pk": sybil["s_pk"]}
    with pytest.raises(SecAggError, match="roster entry 2's keys are not certified"):
        copy(clients[0]).share_keys(roster_request({**keys, 2: forged}))
    # One legitimate identity used twice (a sybil copying client 1's certificate).
    with pytest.raises(SecAggError, match="same identity key|repeats"):
        copy(clients[0]).share_keys(roster_request({**keys, 3: keys[1]}))
    clients[0].share_keys(roster_request(keys))


# --- 4. Replies are authenticated end to end; false claims are harmless -----------------------

def test_altered_rejected_list_in_transit_drops_the_sender_and_keeps_the_sum_exact() -> None:
    def alter(round_name, sender, recipient, data):
        if round_name == MASKED_INPUT and sender == 3:
            msg = body(data)
            msg["rejected"] = [0]  # claim, in client 3's name, that client 0's share was bad
            return encode(msg) + data[-64:]
        return data

    vectors = [np.arange(DIM) * (u + 1) for u in range(6)]
    result = simulate(vectors, 4, seed=2, tamper=alter)
    assert result.dropped == [3] and "signature does not verify" in result.discarded[3]
    assert np.array_equal(result.aggregate, plain_sum(vectors, [0, 1, 2, 4, 5]))


def test_a_forged_reply_signed_by_another_key_is_discarded() -> None:
    server, clients, vectors = session(5, 3)
    replies = to_masked(server, clients, vectors)
    # Client 4 (or anyone on the path) writes a reply in client 3's name with its own key.
    replies[3] = seal_signed(clients[4].sig_sk, server.session, MASKED_INPUT, 3, "server",
                             **{k: v for k, v in body(replies[3]).items()
                                if k not in ("session", "round", "sender", "recipient")})
    unmask = server.unmasking_requests(replies)
    assert server.dropped == [3] and "signature does not verify" in server.discarded[3]
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, plain_sum(vectors, [0, 1, 2, 4]))


@pytest.mark.parametrize("active", [False, True])
def test_a_client_lying_about_rejections_cannot_make_the_sum_wrong(active: bool) -> None:
    # Client 4 falsely says client 1's share failed to decrypt, and signs that claim itself.
    server, clients, vectors = session(7, 5, active=active)
    replies = to_masked(server, clients, vectors)
    replies[4] = resign(clients[4], replies[4], rejected=[1])
    if active:
        replies = {u: clients[u].consistency_check(m) for u, m in server.consistency_check_requests(replies).items()}
    unmask = server.unmasking_requests(replies)
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, plain_sum(vectors, server.survivors))
    assert server.survivors == [0, 2, 3, 4, 5, 6]  # the accused is treated as dropped, the sum stays exact


# --- 5. Wrong shares are detected -------------------------------------------------------------

def corrupt_one_share(reply: bytes, client: SecAggClient, kind: str, owner: int) -> bytes:
    msg = body(reply)
    ids, rows = msg[f"{kind}_ids"].tolist(), msg[f"{kind}_shares"].copy()
    row = ids.index(owner)
    rows[row * SECRET_CHUNKS] = (rows[row * SECRET_CHUNKS] + 1) % shamir.PRIME
    return resign(client, reply, **{f"{kind}_shares": rows})


@pytest.mark.parametrize("kind", ["b", "s"])
def test_a_corrupted_share_is_found_and_excluded_when_extra_shares_exist(kind: str) -> None:
    server, clients, vectors = session(8, 5)
    replies = to_masked(server, clients, vectors)
    del replies[7]  # client 7 drops: its s_sk is reconstructed
    unmask = server.unmasking_requests(replies)
    answers = {u: clients[u].unmasking(m) for u, m in unmask.items()}
    answers[2] = corrupt_one_share(answers[2], clients[2], kind, 0 if kind == "b" else 7)
    total = server.aggregate(answers)
    assert np.array_equal(total, plain_sum(vectors, range(7)))
    assert "not on the polynomial" in server.discarded[2]


@pytest.mark.parametrize("kind", ["b", "s"])
def test_a_corrupted_share_among_exactly_t_raises_instead_of_a_wrong_sum(kind: str) -> None:
    server, clients, vectors = session(8, 5)
    replies = to_masked(server, clients, vectors)
    del replies[7]
    unmask = server.unmasking_requests(replies)
    answers = {u: clients[u].unmasking(m) for u, m in list(unmask.items())[:5]}  # exactly t answer
    answers[2] = corrupt_one_share(answers[2], clients[2], kind, 0 if kind == "b" else 7)
    with pytest.raises(SecAggError, match="corrupted.*refusing to return a sum"):
        server.aggregate(answers)


def test_extra_shares_on_a_wrong_polynomial_are_detected() -> None:
    # The parity check of the extra shares against a plain reference: evaluate the polynomial.
    xs = np.arange(1, 9)
    ys = shamir.share(np.array([11, 22, 33]), xs, 5, RandomSource(1))
    assert shamir.consistent(xs, ys, 5, RandomSource(2))
    for holder in range(8):
        bad = ys.copy()
        bad[holder, 1] = (bad[holder, 1] + 1) % shamir.PRIME
        assert not shamir.consistent(xs, bad, 5, RandomSource(3))
        secret, culprits = shamir.recover(list(xs), bad, 5, lambda s: s.tolist() == [11, 22, 33], RandomSource(4))
        assert secret.tolist() == [11, 22, 33] and culprits == [holder]


def _alter_bits(msg: dict) -> None:
    msg["bits"] = 31  # the client would mask modulo 2**31 while everyone else uses 2**32


def _alter_roster(msg: dict) -> None:
    raw = bytearray(msg["roster"]["s_pk"])
    raw[32:64] = crypto.public_key(bytes(32))  # member 1's s_pk: client 0's pair mask would not cancel
    msg["roster"]["s_pk"] = bytes(raw)


def _alter_forwarded(msg: dict) -> None:
    cts = msg["ciphertexts"]  # hide one partner: client 0 would mask with fewer partners than the server thinks
    msg["ciphertexts"] = {"ids": cts["ids"][1:], "sizes": cts["sizes"][1:], "data": cts["data"][cts["sizes"][0]:]}


@pytest.mark.parametrize(("round_name", "alter"), [
    ("advertise_keys", _alter_bits), ("share_keys", _alter_roster), ("masked_input", _alter_forwarded),
])
def test_a_request_altered_in_transit_drops_its_recipient_not_the_sum(round_name: str, alter) -> None:
    def tamper(r, sender, recipient, data):
        if r == round_name and recipient == 0:
            msg = decode(data)
            alter(msg)
            return encode(msg)
        return data

    # Each alteration is accepted by client 0 (nothing in it is checkable on its own), but the
    # reply echoes a hash of the request it answered, so the server discards it.
    vectors = [np.arange(DIM) * (u + 1) + 7 for u in range(6)]
    result = simulate(vectors, 4, seed=3, tamper=tamper)
    assert 0 not in result.survivors and "answers another request" in result.discarded[0]
    assert np.array_equal(result.aggregate, plain_sum(vectors, result.survivors))


# --- Early work: replies taken as they arrive (SecAggServer.take) ----------------------------
# The server may check a reply, add a masked input to the sum and remove a survivor's self mask
# before a round's replies are all in; it must end exactly where the round calls alone end.

@pytest.mark.parametrize(("active", "neighbours", "t", "dropouts"), [
    (False, None, 5, {}),
    (False, None, 5, {"masked_input": [2], "unmasking": [5]}),
    (False, 6, 4, {"share_keys": [1], "unmasking": [0, 6]}),
    (True, None, 7, {"consistency_check": [3], "unmasking": [4]}),
    (True, 6, 5, {"masked_input": [7]}),
])
def test_taking_replies_early_gives_the_same_sum_survivors_and_refusals(active, neighbours, t, dropouts) -> None:
    rng = np.random.default_rng(5)
    vectors = [rng.integers(0, 2**20, size=33) for _ in range(9)]
    plain = simulate(vectors, t, dropouts, neighbours=neighbours, seed=4, active=active)
    early = simulate(vectors, t, dropouts, neighbours=neighbours, seed=4, active=active, early=True)
    assert np.array_equal(early.aggregate, plain.aggregate)
    assert np.array_equal(early.aggregate, np.sum([vectors[u] for u in early.survivors], axis=0))
    assert (early.survivors, early.dropped, early.discarded) == (plain.survivors, plain.dropped, plain.discarded)


def test_a_masked_input_taken_early_then_altered_is_taken_out_of_the_sum() -> None:
    # The server checks and sums client 3's reply as it arrives; the copy the round call gets
    # has been altered (its signature fails). Client 3 is dropped, and its input must leave the sum.
    originals: dict[tuple[str, int], bytes] = {}

    def alter(round_name, sender, recipient, data):
        if round_name == MASKED_INPUT and sender == 3:
            originals[(round_name, sender)] = data
            msg = body(data)
            msg["rejected"] = []
            return encode(msg) + bytes(64)
        return data

    vectors = [np.arange(DIM) * (u + 1) for u in range(6)]
    result = simulate(vectors, 4, seed=2, tamper=alter, early=lambda r, u, data: originals.get((r, u), data))
    assert result.dropped == [3] and "signature does not verify" in result.discarded[3]
    assert np.array_equal(result.aggregate, plain_sum(vectors, [0, 1, 2, 4, 5]))


@pytest.mark.parametrize("first", [True, False])
def test_a_corrupted_share_taken_early_never_reaches_the_sum(first: bool) -> None:
    # Client 2's share of client 0's self-mask seed is off by one. Taken first, it is among the
    # first t shares, whose seed does not match client 0's commitment: nothing is removed early
    # and the round call finds the bad holder. Taken last, the seed came from good shares.
    server, clients, vectors = session(8, 5)
    replies = to_masked(server, clients, vectors)
    for u, data in replies.items():
        server.take(u, data)
    unmask = server.unmasking_requests(replies)
    answers = {u: clients[u].unmasking(m) for u, m in unmask.items()}
    answers[2] = corrupt_one_share(answers[2], clients[2], "b", 0)
    order = [2] + [u for u in answers if u != 2] if first else [u for u in answers if u != 2] + [2]
    for u in order:
        server.take(u, answers[u])
    assert (0 in server._unmasked) is not first
    total = server.aggregate(answers)
    assert np.array_equal(total, plain_sum(vectors, range(8)))
    assert "not on the polynomial" in server.discarded[2]


def test_take_ignores_what_the_server_is_not_waiting_for() -> None:
    server, clients, vectors = session(5, 3)
    replies = to_masked(server, clients, vectors)
    junk = [(0, b"\x00" * 10), (1, "not bytes"), (9, replies[0]), (2, replies[3])]
    for u, data in junk:
        server.take(u, data)  # malformed, wrong type, unknown sender, another client's reply
    server.take(4, replies[4])
    server.take(4, replies[4])  # taken twice: summed once
    unmask = server.unmasking_requests(replies)
    assert server.dropped == [] and server.discarded == {}
    for u, data in replies.items():  # a masked-input reply during the unmasking round is not awaited
        server.take(u, data)
    answers = {u: clients[u].unmasking(m) for u, m in unmask.items()}
    assert np.array_equal(server.aggregate(answers), plain_sum(vectors, range(5)))
    assert np.array_equal(server.aggregate(answers), plain_sum(vectors, range(5)))  # the early work is used once


def test_too_few_shares_still_raise_after_early_work() -> None:
    server, clients, vectors = session(6, 4)
    replies = to_masked(server, clients, vectors)
    for u, data in replies.items():
        server.take(u, data)
    unmask = server.unmasking_requests(replies)
    answers = {u: clients[u].unmasking(m) for u, m in list(unmask.items())[:3]}
    for u, data in answers.items():
        server.take(u, data)
    assert not server._unmasked
    with pytest.raises(SecAggError, match="fewer than the threshold 4"):
        server.aggregate(answers)


def test_unmasking_round_name_is_the_one_taken_in_the_last_round() -> None:
    server, clients, vectors = session(5, 3)
    replies = to_masked(server, clients, vectors)
    unmask = server.unmasking_requests(replies)
    answers = {u: clients[u].unmasking(m) for u, m in unmask.items()}
    for u, data in answers.items():
        server.take(u, data)
    assert {key for key in server._early} == {(UNMASKING, u) for u in answers}
    assert sorted(server._unmasked) == list(range(5))
    assert np.array_equal(server.aggregate(answers), plain_sum(vectors, range(5)))


def test_a_round_call_with_other_than_the_bytes_taken_checks_what_it_got() -> None:
    # Client 4's reply was taken as bytes; the round call gets an array of the same bytes.
    server, clients, vectors = session(5, 3)
    replies = to_masked(server, clients, vectors)
    for u, data in replies.items():
        server.take(u, data)
    unmask = server.unmasking_requests({**replies, 4: np.frombuffer(replies[4], dtype=np.uint8)})
    assert server.dropped == [4] and "masked_input" in server.discarded[4]
    total = server.aggregate({u: clients[u].unmasking(m) for u, m in unmask.items()})
    assert np.array_equal(total, plain_sum(vectors, [0, 1, 2, 3]))
