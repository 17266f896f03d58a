"""The building blocks against their references: PRG, key agreement, AEAD, wire codec, graph, quantizer."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scipy.stats import chisquare

from secure_agg import Quantization, SecAggError, crypto, default_degree, prg, random_harary_graph
from secure_agg.prg import MaskGenerator
from secure_agg.quantize import quantize_into
from secure_agg.randomness import RandomSource
from secure_agg.wire import decode, encode, pack_blobs, unpack_blobs


def _aes_ctr(seed: bytes, nbytes: int) -> bytes:
    """The reference keystream: AES-128-CTR from counter block 0^96 || 2 (where GCM starts)."""
    return Cipher(algorithms.AES(seed[:16]), modes.CTR((2).to_bytes(16, "big"))).encryptor().update(bytes(nbytes))


@pytest.mark.parametrize("mode", ["gcm", "ctr", None])
def test_prg_is_the_aes_ctr_keystream_reduced_mod_2_bits(mode: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whichever OpenSSL encryptor writes it (GCM's, CTR's, or the one measured faster), the bytes
    # are the reference keystream; and GCM's ciphertext of zeros under the zero nonce is that keystream.
    monkeypatch.setattr(prg, "KEYSTREAM_MODE", mode)
    seed = bytes(range(32))
    ref = np.frombuffer(_aes_ctr(seed, 4 * 1000), dtype=np.uint32)
    assert AESGCM(seed[:16]).encrypt(bytes(12), bytes(4000), None)[:4000] == ref.tobytes()
    assert np.array_equal(MaskGenerator(1000, 32).mask(seed), ref)
    assert np.array_equal(MaskGenerator(1000, 20).mask(seed), ref & np.uint32(2**20 - 1))
    ref64 = np.frombuffer(_aes_ctr(seed, 8000), dtype=np.uint64)
    assert np.array_equal(MaskGenerator(1000, 64).mask(seed), ref64)
    acc = np.zeros(1000, dtype=np.uint32)
    gen = MaskGenerator(1000, 32)
    gen.add(acc, seed)
    gen.add(acc, seed, -1)
    assert not acc.any()
    counts = np.bincount(MaskGenerator(80000, 12).mask(bytes(32)) >> np.uint32(8), minlength=16)
    assert chisquare(counts).pvalue > 1e-4


def test_keystream_from_any_block_and_its_length_bound() -> None:
    seed = bytes(range(1, 33))
    whole = _aes_ctr(seed, 16 * 40)
    for block in (0, 1, 17, 39):
        out = bytearray(16 * (40 - block) + 15)
        prg.keystream(seed, block).update_into(bytes(16 * (40 - block)), out)
        assert bytes(out[: 16 * (40 - block)]) == whole[16 * block:]
    # GCM counts blocks in 32 bits: no stream may reach the wrap (64 GiB), refused before any work.
    with pytest.raises(SecAggError, match="too long for one keystream"):
        MaskGenerator(prg.MAX_STREAM_BYTES // 4 + 1, 32)
    assert MaskGenerator(prg.MAX_STREAM_BYTES // 8, 64).length == prg.MAX_STREAM_BYTES // 8


def test_pairwise_seeds_agree_and_differ_by_purpose() -> None:
    session = b"s" * 16
    a, b = RandomSource(1).bytes(32), RandomSource(2).bytes(32)
    ka, kb = crypto.KeyAgreement(a, session), crypto.KeyAgreement(b, session)
    seed_ab = ka.mask_seed(3, 9, crypto.public_key(b))
    assert seed_ab == kb.mask_seed(9, 3, crypto.public_key(a))
    assert seed_ab != ka.channel_key(3, 9, crypto.public_key(b))
    assert seed_ab != crypto.KeyAgreement(a, b"t" * 16).mask_seed(3, 9, crypto.public_key(b))


def test_aead_binds_round_and_both_ids() -> None:
    key, rng = bytes(32), RandomSource(0)
    ct = crypto.encrypt(key, b"share", crypto.associated_data(b"s", "share_keys", 1, 2), rng)
    assert crypto.decrypt(key, ct, crypto.associated_data(b"s", "share_keys", 1, 2)) == b"share"
    for aad in (crypto.associated_data(b"s", "share_keys", 2, 1), crypto.associated_data(b"s", "unmasking", 1, 2),
                crypto.associated_data(b"x", "share_keys", 1, 2)):
        with pytest.raises(SecAggError, match="authentication failed"):
            crypto.decrypt(key, ct, aad)


def test_wire_roundtrip_and_malformed_input() -> None:
    obj = {"a": [1, -2**70, None, True], 5: b"\x00\xff", "arr": np.arange(5, dtype=np.uint32), "s": "é"}
    back = decode(encode(obj))
    assert back["a"] == obj["a"] and back[5] == obj[5] and back["s"] == obj["s"]
    assert back["arr"].dtype == np.uint32 and np.array_equal(back["arr"], obj["arr"])
    data = encode(obj)
    with pytest.raises(SecAggError, match="truncated"):
        decode(data[:-3])
    with pytest.raises(SecAggError, match="trailing"):
        decode(data + b"\x00")
    blobs = {4: b"abc", 1: b"", 9: b"zz"}
    assert unpack_blobs(pack_blobs(blobs)) == blobs
    assert unpack_blobs(pack_blobs({})) == {}


@pytest.mark.parametrize(("n", "k"), [(10, 4), (12, 3), (101, 8), (7, 6)])
def test_harary_graph_is_k_regular_and_symmetric(n: int, k: int) -> None:
    graph = random_harary_graph(list(range(n)), k, RandomSource(n))
    assert all(len(vs) == k and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert graph != random_harary_graph(list(range(n)), k, RandomSource(n + 1)) or k == n - 1
    assert default_degree(10_000) == 14


def test_quantizer_cannot_wrap_and_states_its_bound() -> None:
    q = Quantization(clip=1.0, bits=16).for_clients(7)
    assert round(2 * q.clip * q.scale) * 7 <= 2**16 - 1
    # The scale is the largest power of two that cannot wrap: twice it would.
    assert q.scale == 2.0**12 and 2 * round(q.clip * 2 * q.scale) * 7 > 2**16 - 1
    x = np.linspace(-1.5, 1.5, 31)
    words = q.quantize(x)
    assert words.min() == 0 and int(words.max()) == 2 * q.offset == 2 * 2**12
    assert np.max(np.abs(q.dequantize(words, 1) - np.clip(x, -1, 1))) <= q.error_bound(1)
    with pytest.raises(SecAggError, match="too small"):
        Quantization(clip=1.0, bits=4).for_clients(100)
    with pytest.raises(SecAggError, match="NaN"):
        q.quantize(np.array([np.nan]))


def _round_half_even(v: float) -> int:
    # Python's round() on a float: the exact nearest integer, ties to even (as np.rint).
    return round(v)


@pytest.mark.parametrize("weight", [1.0, 0.37, 1e-3])
def test_quantize_into_skips_the_clip_only_where_it_changes_nothing(weight: float) -> None:
    q = Quantization(clip=2.0, bits=32).for_clients(5)
    top = q.clip * q.scale
    edge = np.float32(q.clip / weight)  # weighted, lands on the clip limit (or a rounding away from it)
    cases = {"inside": np.linspace(-1.0, 1.0, 70_001, dtype=np.float32),
             "beyond": np.linspace(-3.0 / weight, 5.0 / weight, 70_001, dtype=np.float32),
             "edge": np.array([-edge, 0.0, edge, np.nextafter(edge, np.float32(0))], dtype=np.float32),
             "ints": np.array([-(2**60), 0, 3, 2**60], dtype=np.int64)}
    for name, x in cases.items():
        plain = quantize_into(x, weight, q, np.empty(x.size, np.uint32))
        ranged = quantize_into(x, weight, q, np.empty(x.size, np.uint32), value_range=(x.min(), x.max()))
        assert np.array_equal(plain, ranged), name
        # Both against the definition, entry by entry in Python floats: clip, round, shift.
        sample = x[:: max(1, x.size // 500)]
        expect = [_round_half_even(min(max(float(v) * (weight * q.scale), -top), top)) + q.offset for v in sample]
        assert ranged[:: max(1, x.size // 500)].tolist() == expect, name


def test_hkdf_matches_the_cryptography_reference() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for ikm, salt, info, length in ((b"k" * 32, b"s" * 16, b"mask", 32), (b"x", b"", b"", 80)):
        ref = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
        assert crypto.hkdf_sha256(ikm, salt, info, length) == ref
