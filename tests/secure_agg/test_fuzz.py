"""Point 6 of issue #12: any malformed message drops its sender, never the round.

The decoder and every client method raise only SecAggError on any bytes; the server turns any
bad reply into ``discarded``. A seeded fuzzer mutates thousands of messages in every round and
both directions: each session must end with the exact sum of the survivors the server names,
or with SecAggError, and never with another exception or a wrong sum.
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg import ROUNDS, SecAggClient, SecAggError, SecAggServer, simulate
from secure_agg.wire import _DICT, _LIST, _STR, decode, encode, seal


def test_decoder_raises_only_secagg_error_on_hostile_bytes() -> None:
    list_key = bytes((_DICT,)) + (1).to_bytes(4, "little") + encode([1]) + encode(2)
    bad_utf8 = bytes((_STR,)) + (2).to_bytes(4, "little") + b"\xff\xfe"
    huge_list = bytes((_LIST,)) + (2**32 - 1).to_bytes(4, "little") + b"\x00"
    huge_bytes = encode(b"abc")[:1] + (2**32 - 1).to_bytes(4, "little") + b"abc"
    deep = bytes((_LIST,)) + (1).to_bytes(4, "little")
    cases = {
        "dict key": list_key, "UTF-8": bad_utf8, "past the end": huge_list, "runs past": huge_bytes, "truncated": encode([1, 2])[:-1],
        "nested too deeply": deep * 40 + encode(None), "unknown tag": b"\x63", "array dtype": b"\x08zz\x00\x00\x00\x00",
    }
    for reason, data in cases.items():
        with pytest.raises(SecAggError, match=reason):
            decode(data)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        data = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            decode(data)
        except SecAggError:
            pass


def _requests_and_states(active: bool) -> list[tuple[str, bytes, bytes]]:
    """Client 0's request of every round with its saved state just before that round."""
    n = 4
    keys = [bytes([i + 1]) * 32 for i in range(n)] if active else [None] * n
    from secure_agg import crypto

    trusted = [crypto.signing_public_key(k) for k in keys] if active else None
    server = SecAggServer(list(range(n)), 3, 4, seed=0, active=active)
    clients = {u: SecAggClient(u, seed=u, active=active, identity_key=keys[u], trusted_keys=trusted) for u in range(n)}
    out = []
    requests = server.advertise_keys_requests()
    steps = [("advertise_keys", server.share_keys_requests), ("share_keys", server.masked_input_requests),
             ("masked_input", server.consistency_check_requests if active else server.unmasking_requests)]
    if active:
        steps.append(("consistency_check", server.unmasking_requests))
    steps.append(("unmasking", None))
    for name, nxt in steps:
        out.append((name, requests[0], clients[0].to_bytes()))
        args = {"masked_input": (np.arange(4),)}.get(name, ())
        replies = {u: getattr(clients[u], name)(m, *args) for u, m in requests.items()}
        if nxt is not None:
            requests = nxt(replies)
    return out


@pytest.mark.parametrize("active", [False, True])
def test_client_methods_raise_only_secagg_error_on_type_swapped_fields(active: bool) -> None:
    weird = [None, True, -1, 2**70, b"", "x", [], [[1]], {}, {"a": 1}, np.zeros(3), np.zeros(2, dtype=np.uint32),
             np.arange(3, dtype=np.int64), np.array([2**62], dtype=np.int64)]
    tried = 0
    for name, request, state in _requests_and_states(active):
        msg = decode(request)
        paths = [(k,) for k in msg] + [(k, j) for k in msg if isinstance(msg[k], dict) for j in msg[k]]
        for path in paths:
            for value in weird:
                changed = {**msg}
                if len(path) == 1:
                    changed[path[0]] = value
                else:
                    changed[path[0]] = {**msg[path[0]], path[1]: value}
                client = SecAggClient.from_bytes(state)
                args = (np.arange(4),) if name == "masked_input" else ()
                try:
                    getattr(client, name)(encode(changed), *args)
                except SecAggError:
                    pass
                tried += 1
    assert tried > 300
    for data in (b"", b"\x05", encode({"id": [1]})):
        with pytest.raises(SecAggError):
            SecAggClient.from_bytes(data)
    with pytest.raises(SecAggError, match="session id"):
        SecAggClient(0).advertise_keys(seal(b"short", "advertise_keys", "server", 0, threshold=2))


def _mutate(data: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    kind = int(rng.integers(0, 7))
    if kind == 0 and data:  # bit flips
        raw = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(raw)
    if kind == 1:  # truncation
        return data[: int(rng.integers(0, max(1, len(data))))]
    if kind == 2 and pool:  # splice with another message
        other = pool[int(rng.integers(0, len(pool)))]
        cut = int(rng.integers(0, len(data) + 1))
        return data[:cut] + other[int(rng.integers(0, len(other) + 1)):]
    if kind == 3:  # random bytes
        return rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
    if kind == 4:  # type swap of one field, re-encoded (a reply keeps its now-stale signature)
        signed = len(data) > 64
        for cut in ((len(data) - 64,) if signed else ()) + (len(data),):
            try:
                msg = decode(data[:cut])
            except SecAggError:
                continue
            if isinstance(msg, dict) and msg:
                key = list(msg)[int(rng.integers(0, len(msg)))]
                values = [None, 7, -1, b"\x00" * 32, "x", [1, [2]], {1: 2}, np.arange(3), np.zeros(0, dtype=np.int64)]
                msg[key] = values[int(rng.integers(0, len(values)))]
                return encode(msg) + data[cut:]
        return data[::-1]
    if kind == 5:  # appended garbage
        return data + rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    return b""  # empty


@pytest.mark.parametrize(("active", "early"), [(False, False), (True, False), (False, True), (True, True)])
def test_fuzzed_sessions_end_exact_or_with_secagg_error(active: bool, early: bool) -> None:
    # early: the server also starts on every (mutated) reply as it arrives (SecAggServer.take).
    rng = np.random.default_rng((12 if active else 21) + (100 if early else 0))
    n, t, dim = 4, 3, 3
    mutations, outcomes = 0, {"exact": 0, "refused": 0}
    pool: list[bytes] = []
    rounds_hit: set[tuple[str, bool]] = set()
    while mutations < 1000:
        rate = float(rng.choice([0.03, 0.15, 0.4]))
        vectors = [rng.integers(0, 1000, size=dim) for _ in range(n)]
        count = 0

        def tamper(round_name, sender, recipient, data, rate=rate):
            nonlocal count
            if len(pool) < 200:
                pool.append(data)
            if rng.random() >= rate:
                return data
            count += 1
            rounds_hit.add((round_name, sender == "server"))
            return _mutate(data, rng, pool)

        try:
            result = simulate(vectors, t, seed=int(rng.integers(0, 2**31)), tamper=tamper, active=active, early=early)
        except SecAggError:
            outcomes["refused"] += 1
        else:
            assert np.array_equal(result.aggregate, np.sum([vectors[u] for u in result.survivors], axis=0))
            outcomes["exact"] += 1
        mutations += count
    # Every round was hit in both directions, and both outcomes occurred.
    expected = {(r, d) for r in ROUNDS if active or r != "consistency_check" for d in (True, False)}
    assert rounds_hit == expected
    assert outcomes["exact"] > 20 and outcomes["refused"] > 20
