"""The server of Bonawitz et al.'s protocol (with the SecAgg+ graph option) as a state machine.

The server routes public keys and encrypted shares, collects masked vectors, and in the last
round asks every survivor for shares of the self-mask seed b_u of each surviving client and of
the masking key s_sk of each dropped client, never both for one client. With t shares of each
it removes the self masks of survivors and the pairwise masks that survivors still share with
dropped clients, which leaves exactly the sum of the survivors' inputs modulo 2**bits.

Every request it sends and every reply it accepts goes through :mod:`secure_agg.wire`; a reply
that is malformed, from another round or session, or from the wrong sender is discarded and its
sender counted as dropped. When fewer than ``threshold`` holders remain for any secret the
server stops with a SecAggError before asking for shares, so nothing is revealed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from secure_agg import crypto, shamir
from secure_agg.client import CIPHERTEXT_BYTES, SECRET_CHUNKS, pair_sign
from secure_agg.errors import SecAggError
from secure_agg.graph import complete_graph, random_harary_graph
from secure_agg.prg import MaskGenerator, reduce_mod, word_dtype
from secure_agg.randomness import RandomSource
from secure_agg.rounds import ADVERTISE_KEYS, DONE, MASKED_INPUT, SHARE_KEYS, UNMASKING
from secure_agg.wire import (
    SERVER,
    open_message,
    pack_roster,
    seal,
)


class SecAggServer:
    """The aggregation server of one session.

    Args:
        client_ids: The invited clients (distinct ints).
        threshold: t, shares needed to reconstruct a secret; at least t holders of every
            needed secret must survive to the last round.
        dim: Length of every input vector.
        bits: Inputs and the sum live modulo 2**bits.
        neighbours: ``None`` for the complete graph (Bonawitz et al.); an int k for SecAgg+
            (each client pairs with k neighbours on a random Harary graph; t <= k + 1).
        seed: ``None`` for a random session id and graph; anything else makes them reproducible.
    """

    def __init__(self, client_ids: list[int], threshold: int, dim: int, bits: int = 32,
                 neighbours: int | None = None, seed: int | str | bytes | None = None) -> None:
        ids = sorted(int(u) for u in client_ids)
        if len(set(ids)) != len(ids) or len(ids) < 2:
            raise SecAggError(f"client_ids must be at least 2 distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
        if dim < 1:
            raise SecAggError(f"dim must be positive, got {dim}")
        word_dtype(bits)
        rng = RandomSource(seed, label="server")
        if neighbours is None:
            self.graph = complete_graph(ids)
        else:
            self.graph = random_harary_graph(ids, int(neighbours), rng.child("graph"))
        holders = len(ids) if neighbours is None else int(neighbours) + 1
        if not 1 <= threshold <= holders:
            raise SecAggError(f"threshold must be between 1 and the number of share holders per client ({holders}), got {threshold}")
        self.ids, self.threshold, self.dim, self.bits = ids, int(threshold), int(dim), int(bits)
        self.session = rng.bytes(16)
        self.x = {u: i + 1 for i, u in enumerate(ids)}
        self.stage = ADVERTISE_KEYS
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.alive: set[int] = set(ids)
        self.u2: set[int] = set()
        self.forwarded: dict[int, list[int]] = {}
        self.held: dict[int, set[int]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.partners: dict[int, set[int]] = {}
        self.survivors: list[int] = []
        self.dropped: list[int] = []
        self.discarded: dict[int, str] = {}

    def _request(self, round_name: str, recipient: int, **payload: Any) -> bytes:
        return seal(self.session, round_name, SERVER, recipient, **payload)

    def _accept(self, responses: dict[int, bytes], round_name: str, expected: set[int]) -> dict[int, dict[str, Any]]:
        accepted = {}
        for sender, data in responses.items():
            if sender not in expected:
                self.discarded[sender] = f"{round_name}: not expected to answer"
                continue
            try:
                accepted[sender] = open_message(data, session=self.session, round_name=round_name, recipient=SERVER, sender=sender)
            except SecAggError as exc:
                self.discarded[sender] = f"{round_name}: {exc}"
        return accepted

    def _holders(self, u: int) -> set[int]:
        return set(self.graph[u]) | {u}

    def _check_holders(self, needed: set[int], alive: set[int], when: str) -> None:
        if len(alive) < self.threshold:
            raise SecAggError(f"only {len(alive)} clients remain {when}, fewer than the threshold {self.threshold}; "
                              "aborting before any share is revealed")
        for u in sorted(needed):
            count = len(self._holders(u) & alive)
            if count < self.threshold:
                raise SecAggError(f"only {count} share holders of client {u} remain {when}, fewer than the threshold "
                                  f"{self.threshold}; aborting before any share is revealed")

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"the server is in round {self.stage!r}, not {stage!r}")

    def advertise_keys_requests(self) -> dict[int, bytes]:
        """Round 0 requests: the session parameters, one message per client."""
        self._expect(ADVERTISE_KEYS)
        self.stage = SHARE_KEYS
        return {u: self._request(ADVERTISE_KEYS, u, threshold=self.threshold, dim=self.dim, bits=self.bits) for u in self.ids}

    def share_keys_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Takes the public keys (U1) and sends each client the roster of its share holders."""
        self._expect(SHARE_KEYS)
        for u, msg in self._accept(responses, ADVERTISE_KEYS, self.alive).items():
            c_pk, s_pk = msg.get("c_pk"), msg.get("s_pk")
            if isinstance(c_pk, bytes) and isinstance(s_pk, bytes) and len(c_pk) == len(s_pk) == crypto.KEY_BYTES:
                self.keys[u] = (c_pk, s_pk)
            else:
                self.discarded[u] = f"{ADVERTISE_KEYS}: malformed public keys"
        self.alive = set(self.keys)
        self._check_holders(self.alive, self.alive, "after advertise_keys")
        self.stage = MASKED_INPUT
        requests = {}
        # In the complete graph every client gets the same roster: pack it once.
        packed: dict[tuple[int, ...], dict[str, Any]] = {}
        for u in sorted(self.alive):
            members = tuple(sorted(self._holders(u) & self.alive))
            if members not in packed:
                packed[members] = pack_roster({v: (self.x[v], *self.keys[v]) for v in members})
            requests[u] = self._request(SHARE_KEYS, u, roster=packed[members])
        return requests

    def masked_input_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Takes the encrypted shares (U2) and forwards to each client those addressed to it."""
        self._expect(MASKED_INPUT)
        senders, recipients, rows = [], [], []
        for u, msg in self._accept(responses, SHARE_KEYS, self.alive).items():
            try:
                ids, block = _ciphertext_block(msg.get("ciphertexts"))
            except SecAggError as exc:
                self.discarded[u] = f"{SHARE_KEYS}: {exc}"
                continue
            if sorted(ids.tolist()) != sorted((self._holders(u) & self.alive) - {u}):
                self.discarded[u] = f"{SHARE_KEYS}: ciphertexts not addressed to exactly its share holders"
                continue
            self.u2.add(u)
            senders.append(np.full(len(ids), u, dtype=np.int64))
            recipients.append(ids)
            rows.append(block)
        self.alive = set(self.u2)
        self._check_holders(self.u2, self.alive, "after share_keys")
        self.stage = UNMASKING
        # Routing n^2 ciphertexts one by one in Python dominates at n = 500; all have the same
        # length, so sort the (recipient, sender) edges once and cut contiguous blocks.
        src = np.concatenate(senders) if senders else np.zeros(0, dtype=np.int64)
        dst = np.concatenate(recipients) if recipients else np.zeros(0, dtype=np.int64)
        data = np.concatenate(rows) if rows else np.zeros((0, CIPHERTEXT_BYTES), dtype=np.uint8)
        keep = np.isin(dst, np.fromiter(self.u2, dtype=np.int64, count=len(self.u2)))
        src, dst, data = src[keep], dst[keep], data[keep]
        order = np.lexsort((src, dst))
        src, dst, data = src[order], dst[order], data[order]
        requests = {}
        for u in sorted(self.alive):
            lo, hi = np.searchsorted(dst, u, side="left"), np.searchsorted(dst, u, side="right")
            self.forwarded[u] = src[lo:hi].tolist()
            packed = {"ids": src[lo:hi], "sizes": np.full(hi - lo, CIPHERTEXT_BYTES, dtype=np.int64),
                      "data": data[lo:hi].tobytes()}
            requests[u] = self._request(MASKED_INPUT, u, ciphertexts=packed)
        return requests

    def unmasking_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Takes the masked vectors (U3), settles who survived, and asks for the needed shares."""
        self._expect(UNMASKING)
        dtype = word_dtype(self.bits)
        rejected_by: dict[int, set[int]] = {}
        for u, msg in self._accept(responses, MASKED_INPUT, self.alive).items():
            y, rej = msg.get("masked"), msg.get("rejected")
            if not isinstance(y, np.ndarray) or y.dtype != dtype or y.shape != (self.dim,) or not isinstance(rej, list):
                self.discarded[u] = f"{MASKED_INPUT}: masked vector of the wrong dtype or length"
                continue
            self.masked[u] = y
            rejected_by[u] = set(rej)
        # A client whose ciphertext someone refused is treated as dropped: its masked vector is
        # discarded, its masking key is recovered, and every mask it shares is removed.
        refused = set().union(*rejected_by.values()) if rejected_by else set()
        survivors = set(self.masked) - refused
        dropped = self.u2 - survivors
        for v in refused:
            self.masked.pop(v, None)
        for u in survivors:
            self.partners[u] = set(self.forwarded[u]) - rejected_by[u]
            self.held[u] = self.partners[u] | {u}
        self.survivors, self.dropped = sorted(survivors), sorted(dropped)
        self._check_holders(set(self.u2), survivors, "after masked_input")
        for v in self.u2:
            # Only v's graph neighbours (and v) can hold its shares: O(k) per client, not O(n).
            have = sum(1 for u in self._holders(v) if u in survivors and v in self.held[u])
            if have < self.threshold:
                raise SecAggError(f"only {have} survivors hold shares of client {v}, fewer than the threshold "
                                  f"{self.threshold}; aborting before any share is revealed")
        self.alive = survivors
        self.stage = DONE
        return {u: self._request(UNMASKING, u, survivors=np.array(sorted((self.held[u] & survivors) | {u}), dtype=np.int64),
                                 dropped=np.array(sorted(self.held[u] & dropped), dtype=np.int64))
                for u in self.survivors}

    def aggregate(self, responses: dict[int, bytes]) -> np.ndarray:
        """Reconstructs the secrets from the shares and returns the survivors' sum modulo 2**bits."""
        self._expect(DONE)
        b_shares: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        s_shares: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        survivors, dropped = set(self.survivors), set(self.dropped)
        for h, msg in self._accept(responses, UNMASKING, survivors).items():
            try:
                bs = _share_rows(msg, "b_ids", "b_shares", survivors & self.held[h])
                ss = _share_rows(msg, "s_ids", "s_shares", dropped & self.held[h])
            except SecAggError as exc:
                self.discarded[h] = f"{UNMASKING}: {exc}"
                continue
            for v, row in bs.items():
                b_shares[v].append((self.x[h], row))
            for v, row in ss.items():
                s_shares[v].append((self.x[h], row))
        for kind, needed, got in (("self-mask", survivors, b_shares), ("key", dropped, s_shares)):
            for v in sorted(needed):
                if len(got[v]) < self.threshold:
                    raise SecAggError(f"only {len(got[v])} {kind} shares of client {v} arrived, fewer than the "
                                      f"threshold {self.threshold}; the sum cannot be unmasked")
        b_seeds = self._reconstruct(b_shares, self.survivors)
        s_keys = self._reconstruct(s_shares, self.dropped)
        for v, sk in s_keys.items():
            if crypto.public_key(sk) != self.keys[v][1]:
                raise SecAggError(f"the reconstructed masking key of client {v} does not match its public key")
        total = np.zeros(self.dim, dtype=word_dtype(self.bits))
        for u in self.survivors:
            np.add(total, self.masked[u], out=total)
        prg = MaskGenerator(self.dim, self.bits)
        for u in self.survivors:
            prg.add(total, b_seeds[u], -1)
        for v in self.dropped:
            agreement = crypto.KeyAgreement(s_keys[v], self.session)
            for u in sorted(set(self.graph[v]) & survivors):
                if v in self.partners[u]:
                    prg.add(total, agreement.mask_seed(v, u, self.keys[u][1]), -pair_sign(u, v))
        return reduce_mod(total, self.bits)

    def _reconstruct(self, shares: dict[int, list[tuple[int, np.ndarray]]], owners: list[int]) -> dict[int, bytes]:
        # Secrets whose first t holders coincide share one set of Lagrange coefficients.
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for v in owners:
            shares[v].sort(key=lambda pair: pair[0])
            groups[tuple(x for x, _ in shares[v][: self.threshold])].append(v)
        secrets = {}
        for xs, members in groups.items():
            ys = np.stack([np.stack([row for _, row in shares[v][: self.threshold]]) for v in members], axis=1)
            values = shamir.reconstruct(list(xs), ys, self.threshold)
            for v, chunks in zip(members, values, strict=True):
                secrets[v] = shamir.field_to_secret(chunks, crypto.KEY_BYTES)
        return secrets


def _ciphertext_block(packed: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(packed, dict) or not {"ids", "sizes", "data"} <= packed.keys():
        raise SecAggError("malformed ciphertexts: ids, sizes or data missing")
    ids, sizes, data = packed["ids"], packed["sizes"], packed["data"]
    if not isinstance(ids, np.ndarray) or not isinstance(sizes, np.ndarray) or not isinstance(data, bytes) \
            or ids.dtype != np.int64 or ids.shape != sizes.shape or np.any(sizes != CIPHERTEXT_BYTES) \
            or len(data) != len(ids) * CIPHERTEXT_BYTES or len(np.unique(ids)) != len(ids):
        raise SecAggError(f"malformed ciphertexts: every one must be {CIPHERTEXT_BYTES} bytes, ids distinct")
    return ids, np.frombuffer(data, dtype=np.uint8).reshape(len(ids), CIPHERTEXT_BYTES)


def _share_rows(msg: dict[str, Any], ids_key: str, rows_key: str, allowed: set[int]) -> dict[int, np.ndarray]:
    ids, rows = msg.get(ids_key), msg.get(rows_key)
    if not isinstance(ids, np.ndarray) or not isinstance(rows, np.ndarray) or rows.shape != (len(ids) * SECRET_CHUNKS,):
        raise SecAggError(f"malformed {rows_key}")
    if not set(ids.tolist()) <= allowed or len(set(ids.tolist())) != len(ids):
        raise SecAggError(f"{rows_key} for clients it was not asked about")
    if np.any((rows < 0) | (rows >= shamir.PRIME)):
        raise SecAggError(f"{rows_key} outside the field")
    return dict(zip(ids.tolist(), rows.astype(np.int64).reshape(len(ids), SECRET_CHUNKS), strict=True))


__all__ = ["SECRET_CHUNKS", "SecAggServer"]
