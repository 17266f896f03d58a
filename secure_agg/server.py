"""The server of Bonawitz et al.'s protocol (with the SecAgg+ graph option) as a state machine.

The server routes public keys and encrypted shares, collects masked vectors, and in the last
round asks every survivor for shares of the self-mask seed b_u of each surviving client and of
the masking key s_sk of each dropped client, never both for one client. With t shares of each
it removes the self masks of survivors and the pairwise masks that survivors still share with
dropped clients, which leaves exactly the sum of the survivors' inputs modulo 2**bits.

Every request it sends and every reply it accepts goes through :mod:`secure_agg.wire`. A reply
is discarded, and its sender counted as dropped, when it is malformed, from another round,
session or sender, not signed by the sender's session key, or answers a request other than the
one sent (its ``ack``). A reconstructed b_u must match the commitment its owner sent and an
s_sk its public key, and every share beyond t must lie on the same polynomial; a holder whose
share does not is named in ``discarded`` and left out, and when no t shares reconstruct the
committed secret the server raises instead of returning a sum. When fewer than ``threshold``
holders remain for any secret the server stops with a SecAggError before asking for shares.
With ``active`` it runs the consistency check of Bonawitz et al. (section 4) between the
masked input and the unmasking.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from secure_agg import crypto, shamir
from secure_agg.client import (
    CIPHERTEXT_BYTES,
    ROSTER_CERTS,
    ROSTER_KEYS,
    SECRET_CHUNKS,
    certificate_digest,
    pair_sign,
    request_digest,
    survivors_digest,
)
from secure_agg.errors import SecAggError
from secure_agg.graph import complete_graph, random_harary_graph
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
from secure_agg.wire import SERVER, open_signed, pack_blobs, pack_roster, seal

# Threads for the server's bulk work: checking the masked replies (BLAKE3 of each vector for
# its signature; hashlib releases the GIL on large buffers: 50 digests of 4 MB took 0.12 s on
# 2 threads against 0.15 s on one, idle 2-core machine) and the unmasking pass (only its adds
# release the GIL, AES in ``cryptography`` holds it).
WORKERS = max(1, min(8, os.cpu_count() or 1))
# Replies at least this large are checked on threads; small ones cost less than a hand-off.
_THREADED_BYTES = 1 << 16


class SecAggServer:
    """The aggregation server of one session.

    Args:
        client_ids: The invited clients (distinct ints).
        threshold: t, shares needed to reconstruct a secret; at least t holders of every
            needed secret must survive to the last round. Clients refuse t at or below their
            own minimum (by default half their share holders, two thirds with ``active``).
        dim: Length of every input vector.
        bits: Inputs and the sum live modulo 2**bits.
        neighbours: ``None`` for the complete graph (Bonawitz et al.); an int k for SecAgg+
            (each client pairs with k neighbours on a random Harary graph; t <= k + 1).
        seed: ``None`` for a random session id and graph; anything else makes them reproducible.
            Nothing the server holds or sends seeds a client secret.
        active: Run the consistency-check round and require certified keys (Bonawitz et al.
            section 4); the clients must be built with ``active=True`` too.
        trusted_keys: Optional, active mode: the identity public keys the server accepts;
            an advertisement certified by any other key is discarded early (clients check
            this themselves in any case).

    Attributes:
        stage: The call the server expects next (a round name, then ``"done"`` for aggregate).
        active: Whether the consistency-check round runs.
        survivors: Clients whose masked inputs are in the sum (U3), once settled.
        dropped: Clients that shared keys but whose inputs are not in the sum.
        discarded: Client id -> why a reply of it was refused (malformed, forged, altered,
            answering an altered request, or a share off the polynomial of the others). A
            client named here is treated as dropped, except a holder whose bad shares were
            found after its own input had entered the sum: it stays among the survivors.
    """

    def __init__(self, client_ids: list[int], threshold: int, dim: int, bits: int = 32,
                 neighbours: int | None = None, seed: int | str | bytes | None = None, active: bool = False,
                 trusted_keys: Collection[bytes] | None = None) -> None:
        if any(isinstance(u, bool) or not isinstance(u, (int, np.integer)) for u in client_ids):
            raise SecAggError("client_ids must be ints")
        ids = sorted(int(u) for u in client_ids)
        if len(set(ids)) != len(ids) or len(ids) < 2:
            raise SecAggError(f"client_ids must be at least 2 distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise SecAggError(f"dim must be a positive int, got {dim!r}")
        word_dtype(bits)
        rng = RandomSource(seed, label="server")
        if neighbours is None:
            self.graph = complete_graph(ids)
        else:
            self.graph = random_harary_graph(ids, int(neighbours), rng.child("graph"))
        self.holders = len(ids) if neighbours is None else int(neighbours) + 1
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
                or not 1 <= threshold <= self.holders:
            raise SecAggError(f"threshold must be between 1 and the number of share holders per client "
                              f"({self.holders}), got {threshold}")
        if not active and trusted_keys is not None:
            raise SecAggError("trusted_keys is for active=True only")
        self.ids, self.threshold, self.dim, self.bits = ids, int(threshold), int(dim), int(bits)
        self.active = bool(active)
        self.trusted = None if trusted_keys is None else set(trusted_keys)
        self.session = rng.bytes(16)
        self._rng = rng.child("checks")
        self.x = {u: i + 1 for i, u in enumerate(ids)}
        self.stage = ADVERTISE_KEYS
        self.keys: dict[int, dict[str, bytes]] = {}
        self.acks: dict[int, bytes] = {}
        self.alive: set[int] = set(ids)
        self.rosters: dict[int, tuple[int, ...]] = {}
        self.u2: set[int] = set()
        self.commits: dict[int, bytes] = {}
        self.forwarded: dict[int, list[int]] = {}
        self.held: dict[int, set[int]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.partners: dict[int, set[int]] = {}
        self.signers: set[int] = set()
        self.asked: set[int] = set()
        self.survivors: list[int] = []
        self.dropped: list[int] = []
        self.discarded: dict[int, str] = {}
        # Work :meth:`take` did ahead while a round's replies were still arriving.
        self._early: dict[tuple[str, int], tuple[Any, dict[str, Any] | None, str]] = {}
        self._total: np.ndarray | None = None  # the masked inputs taken, minus the self masks removed
        self._summed: dict[int, np.ndarray] = {}  # client -> its masked input, added to _total
        self._b_early: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        self._unmasked: dict[int, bytes] = {}  # survivor -> its self-mask seed, its mask removed from _total
        self._generator: MaskGenerator | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, round_name: str, recipient: int, **payload: Any) -> bytes:
        data = seal(self.session, round_name, SERVER, recipient, **payload)
        # Every reply must echo this digest: a request altered on its way gets its reply discarded.
        self.acks[recipient] = request_digest(data)
        return data

    def _accept(self, responses: dict[int, bytes], round_name: str, expected: set[int]) -> dict[int, dict[str, Any]]:
        accepted = {}
        if not isinstance(responses, dict):
            raise SecAggError(f"responses must be a dict of client id -> bytes, got {type(responses).__name__}")
        todo, results = [], {}
        for sender, data in responses.items():
            if sender not in expected:
                self.discarded[sender] = f"{round_name}: not expected to answer"
                continue
            early = self._early.get((round_name, sender))
            if early is not None and (early[0] is data or (isinstance(data, (bytes, bytearray)) and early[0] == data)):
                results[sender] = early[1:]  # checked by take() as it arrived: the same bytes
            else:
                todo.append((sender, data))
        large = sum(1 for _, data in todo if isinstance(data, (bytes, bytearray)) and len(data) >= _THREADED_BYTES)
        if WORKERS > 1 and large > 1:
            with ThreadPoolExecutor(min(WORKERS, len(todo))) as pool:
                results.update(zip((sender for sender, _ in todo),
                                   pool.map(lambda item: self._open_reply(round_name, *item), todo), strict=True))
        else:
            results.update((sender, self._open_reply(round_name, sender, data)) for sender, data in todo)
        for sender in responses:
            if sender not in results:
                continue
            msg, why = results[sender]
            if msg is None:
                self.discarded[sender] = why
            else:
                accepted[sender] = msg
        return accepted

    def _open_reply(self, round_name: str, sender: int, data: bytes) -> tuple[dict[str, Any] | None, str]:
        """(the checked reply, "") or (None, why it is discarded); reads server state only, so it runs on threads."""
        try:
            key = None if round_name == ADVERTISE_KEYS else self.keys[sender]["sig_pk"]
            # Arrays stay views of the reply bytes: the server only reads them (no 4 MB copy per reply).
            msg = open_signed(data, session=self.session, round_name=round_name, sender=sender, public_key=key,
                              copy_arrays=False)
            if msg.get("ack") != self.acks.get(sender):
                raise SecAggError("it answers another request than the one sent (altered in transit?)")
        except SecAggError as exc:
            return None, f"{round_name}: {exc}"
        except Exception as exc:  # the decoder raises only SecAggError; this is a backstop
            return None, f"{round_name}: malformed reply ({type(exc).__name__}: {exc})"
        return msg, ""

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

    def _check_shareholders(self, alive: set[int], when: str) -> None:
        # Only v's graph neighbours (and v) can hold its shares: O(k) per client, not O(n).
        for v in sorted(self.u2):
            have = sum(1 for u in self._holders(v) if u in alive and v in self.held[u])
            if have < self.threshold:
                raise SecAggError(f"only {have} clients holding shares of client {v} remain {when}, fewer than "
                                  f"the threshold {self.threshold}; aborting before any share is revealed")

    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggError(f"the server is in round {self.stage!r}, not {stage!r}")

    # --- early work -------------------------------------------------------------------------

    def _awaited(self) -> tuple[str, set[int]] | None:
        """The round whose replies the server is waiting for, and who may send one."""
        if self.stage == SHARE_KEYS:
            return ADVERTISE_KEYS, self.alive
        if self.stage == MASKED_INPUT:
            return SHARE_KEYS, self.alive
        if self.stage == (CONSISTENCY_CHECK if self.active else UNMASKING):
            return MASKED_INPUT, self.alive
        if self.stage == UNMASKING:
            return CONSISTENCY_CHECK, set(self.survivors)
        if self.stage == DONE:
            return UNMASKING, self.asked
        return None

    def take(self, sender: int, data: bytes) -> None:
        """Starts on one reply to the awaited round while the others are still on their way.

        Optional; lets a caller use the time it waits for the slowest clients. The round's
        own call (``share_keys_requests`` ... ``aggregate``) still gets every reply, reuses the
        work done here for exactly the same bytes, and so returns, checks and refuses exactly
        what it would without it. Here the reply's signature and framing are checked; a checked
        masked input is added to the running sum; and in the last round, as soon as t shares
        of a survivor's self-mask seed reconstruct the seed its owner committed to, that
        survivor's self mask is removed from the sum. Nothing is recorded about a bad reply:
        the round's call reports it.
        """
        awaited = self._awaited()
        if awaited is None or not isinstance(data, (bytes, bytearray)):
            return
        round_name, expected = awaited
        if sender not in expected or (round_name, sender) in self._early:
            return
        msg, why = self._open_reply(round_name, sender, data)
        self._early[(round_name, sender)] = (data, msg, why)
        if msg is None:
            return
        if round_name == MASKED_INPUT:
            y = msg.get("masked")
            if isinstance(y, np.ndarray) and y.dtype == word_dtype(self.bits) and y.shape == (self.dim,):
                np.add(self._running_total(), y, out=self._total)
                self._summed[sender] = y
        elif round_name == UNMASKING:
            try:
                rows = _share_rows(msg, "b_ids", "b_shares", set(self.survivors) & self.held[sender])
            except SecAggError:
                return  # aggregate() discards this holder
            for v, row in rows.items():
                got = self._b_early[v]
                got.append((self.x[sender], sender, row))
                if len(got) == self.threshold:
                    seed = _to_secret(shamir.reconstruct([x for x, _, _ in got], np.stack([r for _, _, r in got]),
                                                         self.threshold))
                    if seed is not None and crypto.commitment(self.session, v, seed) == self.commits[v]:
                        if self._generator is None:  # one keystream buffer for all of them
                            self._generator = MaskGenerator(self.dim, self.bits)
                        self._generator.add(self._running_total(), seed, -1)
                        self._unmasked[v] = seed

    def _running_total(self) -> np.ndarray:
        if self._total is None:
            self._total = np.zeros(self.dim, dtype=word_dtype(self.bits))
        return self._total

    # --- rounds -----------------------------------------------------------------------------

    def advertise_keys_requests(self) -> dict[int, bytes]:
        """Round 0 requests: the session parameters, one message per client."""
        self._expect(ADVERTISE_KEYS)
        self.stage = SHARE_KEYS
        return {u: self._request(ADVERTISE_KEYS, u, threshold=self.threshold, clients=len(self.ids),
                                 holders=self.holders, dim=self.dim, bits=self.bits, active=self.active)
                for u in self.ids}

    def _advertised(self, u: int, msg: dict[str, Any]) -> dict[str, bytes]:
        widths = {**ROSTER_KEYS, **(ROSTER_CERTS if self.active else {})}
        keys = {name: msg.get(name) for name in widths}
        if any(not isinstance(keys[name], bytes) or len(keys[name]) != width for name, width in widths.items()):
            raise SecAggError(f"public keys missing or of the wrong length (need {sorted(widths)})")
        if self.active:
            if self.trusted is not None and keys["ipk"] not in self.trusted:
                raise SecAggError("its identity key is not trusted")
            if not crypto.verify(keys["ipk"], keys["cert"], certificate_digest(
                    self.session, u, keys["c_pk"], keys["s_pk"], keys["sig_pk"])):
                raise SecAggError("its session keys are not certified by its identity key")
        return keys

    def share_keys_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Takes the public keys (U1) and sends each client the roster of its share holders."""
        self._expect(SHARE_KEYS)
        for u, msg in self._accept(responses, ADVERTISE_KEYS, self.alive).items():
            try:
                self.keys[u] = self._advertised(u, msg)
            except SecAggError as exc:
                self.discarded[u] = f"{ADVERTISE_KEYS}: {exc}"
        # A key (or identity) that two clients claim would make every honest client refuse the
        # roster; drop all claimants so that one copied key cannot stop the round.
        owners: dict[bytes, list[int]] = defaultdict(list)
        for u, keys in self.keys.items():
            for value in set(keys.values()) - {keys.get("cert")}:
                owners[value].append(u)
        for claimants in owners.values():
            if len(claimants) > 1:
                for u in claimants:
                    self.keys.pop(u, None)
                    self.discarded[u] = f"{ADVERTISE_KEYS}: advertises a key that another client also advertises"
        self.alive = set(self.keys)
        self._check_holders(self.alive, self.alive, "after advertise_keys")
        self.stage = MASKED_INPUT
        names = list(ROSTER_KEYS) + (list(ROSTER_CERTS) if self.active else [])
        requests = {}
        # In the complete graph every client gets the same roster: pack it once.
        packed: dict[tuple[int, ...], dict[str, Any]] = {}
        for u in sorted(self.alive):
            members = tuple(sorted(self._holders(u) & self.alive))
            if members not in packed:
                packed[members] = pack_roster({v: self.x[v] for v in members},
                                              {name: {v: self.keys[v][name] for v in members} for name in names})
            self.rosters[u] = members
            requests[u] = self._request(SHARE_KEYS, u, roster=packed[members])
        return requests

    def masked_input_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Takes the encrypted shares and commitments (U2) and forwards to each client those addressed to it."""
        self._expect(MASKED_INPUT)
        senders, recipients, rows = [], [], []
        for u, msg in self._accept(responses, SHARE_KEYS, self.alive).items():
            try:
                ids, block = _ciphertext_block(msg.get("ciphertexts"))
                commit = msg.get("commit")
                if not isinstance(commit, bytes) or len(commit) != 32:
                    raise SecAggError("the self-mask commitment must be 32 bytes")
            except SecAggError as exc:
                self.discarded[u] = f"{SHARE_KEYS}: {exc}"
                continue
            if sorted(ids.tolist()) != sorted(set(self.rosters[u]) - {u}):
                self.discarded[u] = f"{SHARE_KEYS}: ciphertexts not addressed to exactly its share holders"
                continue
            self.u2.add(u)
            self.commits[u] = commit
            senders.append(np.full(len(ids), u, dtype=np.int64))
            recipients.append(ids)
            rows.append(block)
        self.alive = set(self.u2)
        self._check_holders(self.u2, self.alive, "after share_keys")
        self.stage = CONSISTENCY_CHECK if self.active else UNMASKING
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

    def _settle(self, responses: dict[int, bytes]) -> None:
        """Takes the masked vectors (U3) and settles who survived."""
        dtype = word_dtype(self.bits)
        rejected_by: dict[int, set[int]] = {}
        for u, msg in self._accept(responses, MASKED_INPUT, self.alive).items():
            y, rej = msg.get("masked"), msg.get("rejected")
            if not isinstance(y, np.ndarray) or y.dtype != dtype or y.shape != (self.dim,):
                self.discarded[u] = f"{MASKED_INPUT}: masked vector of the wrong dtype or length"
                continue
            if not isinstance(rej, list) or any(type(v) is not int for v in rej) \
                    or not set(rej) <= set(self.forwarded[u]):
                self.discarded[u] = f"{MASKED_INPUT}: rejected must list ids of senders forwarded to it"
                continue
            self.masked[u] = y
            rejected_by[u] = set(rej)
        # Every client masked with every partner whose ciphertext it was forwarded, so the masks
        # balance whatever the rejections say. A rejection only means the rejecting client holds
        # no share of that sender; the accused sender is treated as dropped (its masked vector is
        # discarded and its masks removed through its s_sk), so a client sending bad shares
        # cannot stay in the sum, and a false accusation costs at most the accused's input.
        refused = set().union(*rejected_by.values()) if rejected_by else set()
        survivors = set(self.masked) - refused
        for v in refused:
            self.masked.pop(v, None)
        for u in self.u2:
            self.held[u] = (set(self.forwarded[u]) - rejected_by.get(u, set())) | {u}
        for u in survivors:
            self.partners[u] = set(self.forwarded[u])
        self.survivors, self.dropped = sorted(survivors), sorted(self.u2 - survivors)
        self._check_holders(set(self.u2), survivors, f"after {MASKED_INPUT}")
        self._check_shareholders(survivors, f"after {MASKED_INPUT}")
        self.alive = survivors

    def consistency_check_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Active mode: takes the masked vectors (U3) and asks every survivor to sign U3."""
        if not self.active:
            raise SecAggError("consistency_check is a round of active mode; this server has active=False")
        self._expect(CONSISTENCY_CHECK)
        self._settle(responses)
        self.stage = UNMASKING
        u3 = np.array(self.survivors, dtype=np.int64)
        return {u: self._request(CONSISTENCY_CHECK, u, survivors=u3) for u in self.survivors}

    def unmasking_requests(self, responses: dict[int, bytes]) -> dict[int, bytes]:
        """Asks every survivor for the shares the sum needs.

        Semi-honest mode: ``responses`` are the masked-input replies (U3 is settled here).
        Active mode: the consistency-check replies; only survivors whose signature over U3
        verifies are asked, and each gets the signatures of its holders.
        """
        self._expect(UNMASKING)
        dropped = set(self.dropped)
        if not self.active:
            self._settle(responses)
            dropped = set(self.dropped)
            self.stage = DONE
            survivors = set(self.survivors)
            self.asked = set(survivors)
            return {u: self._request(UNMASKING, u, survivors=np.array(sorted(survivors & set(self.rosters[u])), dtype=np.int64),
                                     dropped=np.array(sorted(dropped & set(self.forwarded[u])), dtype=np.int64))
                    for u in self.survivors}
        digest = survivors_digest(self.session, self.survivors)
        signatures = {}
        for u, msg in self._accept(responses, CONSISTENCY_CHECK, set(self.survivors)).items():
            if crypto.verify(self.keys[u]["sig_pk"], msg.get("signature"), digest):
                signatures[u] = msg["signature"]
            else:
                self.discarded[u] = f"{CONSISTENCY_CHECK}: its signature over the survivor set does not verify"
        self.signers = set(signatures)
        self._check_shareholders(self.signers, f"after {CONSISTENCY_CHECK}")
        self.stage = DONE
        u3 = np.array(self.survivors, dtype=np.int64)
        requests = {}
        for u in sorted(self.signers):
            mine = {v: signatures[v] for v in self.rosters[u] if v in signatures}
            if len(mine) < self.threshold:
                continue  # it would refuse anyway; its shares are not needed
            requests[u] = self._request(UNMASKING, u, survivors=u3, signatures=pack_blobs(mine),
                                        dropped=np.array(sorted(dropped & set(self.forwarded[u])), dtype=np.int64))
        self.asked = set(requests)
        return requests

    def aggregate(self, responses: dict[int, bytes]) -> np.ndarray:
        """Reconstructs the secrets from the shares and returns the survivors' sum modulo 2**bits.

        Raises:
            SecAggError: Fewer than t shares of a needed secret, or shares from which no t
                reconstruct the committed secret (never a wrong sum).
        """
        self._expect(DONE)
        b_shares: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        s_shares: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        survivors, dropped = set(self.survivors), set(self.dropped)
        for h, msg in self._accept(responses, UNMASKING, self.asked).items():
            try:
                bs = _share_rows(msg, "b_ids", "b_shares", survivors & self.held[h])
                ss = _share_rows(msg, "s_ids", "s_shares", dropped & self.held[h])
            except SecAggError as exc:
                self.discarded[h] = f"{UNMASKING}: {exc}"
                continue
            for v, row in bs.items():
                b_shares[v].append((self.x[h], h, row))
            for v, row in ss.items():
                s_shares[v].append((self.x[h], h, row))
        for kind, needed, got in (("self-mask", survivors, b_shares), ("key", dropped, s_shares)):
            for v in sorted(needed):
                if len(got[v]) < self.threshold:
                    raise SecAggError(f"only {len(got[v])} {kind} shares of client {v} arrived, fewer than the "
                                      f"threshold {self.threshold}; the sum cannot be unmasked")

        def b_ok(v: int, secret: bytes) -> bool:
            return crypto.commitment(self.session, v, secret) == self.commits[v]

        def s_ok(v: int, secret: bytes) -> bool:
            return crypto.public_key(secret) == self.keys[v]["s_pk"]

        b_seeds = self._reconstruct(b_shares, self.survivors, b_ok, "self-mask seed")
        s_keys = self._reconstruct(s_shares, self.dropped, s_ok, "masking key")
        # What take() did ahead: masked inputs summed, self masks removed. An input summed
        # there that is not a survivor's input as settled comes out again; a seed removed there is the
        # committed one, so it equals the seed reconstructed here (otherwise its mask goes back).
        # Used once: a second call starts from nothing.
        total, taken, unmasked = self._running_total(), self._summed, self._unmasked
        self._total, self._summed, self._unmasked = None, {}, {}
        summed = {u for u, y in taken.items() if u in survivors and self.masked.get(u) is y}
        for u, y in taken.items():
            if u not in summed:
                np.subtract(total, y, out=total)
        streams = [(b_seeds[u], -1) for u in self.survivors if unmasked.get(u) != b_seeds[u]]
        streams += [(seed, 1) for u, seed in unmasked.items() if b_seeds.get(u) != seed]
        for v in self.dropped:
            agreement = crypto.KeyAgreement(s_keys[v], self.session)
            for u in sorted(set(self.graph[v]) & survivors):
                if v in self.partners[u]:
                    streams.append((agreement.mask_seed(v, u, self.keys[u]["s_pk"]), -pair_sign(u, v)))
        # One cache-resident pass adds the masked vectors and removes the masks; the adds run
        # on threads (the clients are idle while the server unmasks, so its cores are free).
        MaskGenerator(self.dim, self.bits).add_many(total, streams, workers=WORKERS,
                                                    vectors=[self.masked[u] for u in self.survivors if u not in summed])
        return reduce_mod(total, self.bits)

    def _reconstruct(self, shares: dict[int, list[tuple[int, int, np.ndarray]]], owners: list[int],
                     accept: Any, kind: str) -> dict[int, bytes]:
        """Every owner's secret, checked against its commitment and against the extra shares."""
        # Secrets held at the same points share one set of Lagrange coefficients and one check.
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for v in owners:
            shares[v].sort(key=lambda item: item[0])
            groups[tuple(x for x, _, _ in shares[v])].append(v)
        secrets: dict[int, bytes] = {}
        t = self.threshold
        for xs, members in groups.items():
            ys = np.stack([np.stack([row for _, _, row in shares[v]]) for v in members], axis=1)
            values = shamir.reconstruct(list(xs[:t]), ys[:t], t)
            clean = shamir.consistent(list(xs), ys, t, self._rng)
            for i, v in enumerate(members):
                secret = _to_secret(values[i])
                if clean and secret is not None and accept(v, secret):
                    secrets[v] = secret
                    continue
                # Slow path: some share is wrong. Find t shares that give the committed secret,
                # name every holder whose share is off that polynomial, and go on without it.
                holders = [h for _, h, _ in shares[v]]

                def fits(chunks: np.ndarray, v: int = v) -> bool:
                    secret = _to_secret(chunks)
                    return secret is not None and accept(v, secret)

                try:
                    chunks, bad = shamir.recover(list(xs), ys[:, i], t, fits, self._rng)
                except SecAggError as exc:
                    raise SecAggError(f"the shares of client {v}'s {kind} are corrupted: {exc}; "
                                      "refusing to return a sum") from exc
                for j in bad:
                    self.discarded[holders[j]] = (f"{UNMASKING}: its share of client {v}'s {kind} is not on the "
                                                  "polynomial of the others (excluded)")
                secrets[v] = _to_secret(chunks)  # type: ignore[assignment]
        return secrets


def _to_secret(chunks: np.ndarray) -> bytes | None:
    try:
        return shamir.field_to_secret(chunks, crypto.KEY_BYTES)
    except SecAggError:
        return None


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
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or not isinstance(rows, np.ndarray) \
            or rows.dtype != np.int64 or rows.shape != (len(ids) * SECRET_CHUNKS,):
        raise SecAggError(f"malformed {rows_key}")
    if not set(ids.tolist()) <= allowed or len(set(ids.tolist())) != len(ids):
        raise SecAggError(f"{rows_key} for clients it was not asked about")
    if np.any((rows < 0) | (rows >= shamir.PRIME)):
        raise SecAggError(f"{rows_key} outside the field")
    return dict(zip(ids.tolist(), rows.reshape(len(ids), SECRET_CHUNKS), strict=True))


__all__ = ["SECRET_CHUNKS", "SecAggServer"]
