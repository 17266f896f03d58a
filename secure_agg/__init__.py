"""Bonawitz-style double-masking secure aggregation with real cryptography (no Flower imports).

``simulate`` runs a whole session in one process; :class:`SecAggClient` and
:class:`SecAggServer` are the round-by-round state machines any transport can carry.

Threat model (what the tests in ``tests/secure_agg/`` attack, and nothing more):

* **Default: semi-honest server.** The server follows the protocol but tries to learn a
  client's input from what it sees. It learns only the sum of the survivors' inputs: a masked
  vector is uniform (tested), and the server never gets both shares (b_u and s_sk) of one
  client from an honest client. Client secrets come from the client's own randomness (the OS;
  a seed only on the client's side, for tests), so nothing the server sends determines them.
  Not covered: a server that lies about who survived while colluding with clients or enrolling
  sybils. With t = 6 of 10 and two colluders, the split-view attack (half the holders told
  client 0 survived, half that it dropped) recovers client 0's input exactly; that is tested,
  as the documented limit of this mode.
* **``active=True``: Bonawitz et al. 2017, section 4.** Each client has a long-term Ed25519
  identity key and a list of trusted identity keys. Its session keys are certified by its
  identity key, and every client checks every roster entry's certificate. Between the masked
  input and the unmasking, a consistency-check round has every survivor sign the survivor set
  U3 it was shown. A client reveals shares only after it sees t valid signatures from distinct
  roster members, all over the same U3 it signed. The default minimum threshold is then
  two thirds. The same split-view attack with the same two colluders fails (tested): the
  server never gets t shares of both of client 0's secrets.
* **Clients enforce the threshold.** A client refuses t at or below its own minimum fraction of
  its share holders (n, or k + 1 with SecAgg+), a roster larger than announced or smaller than
  t, and an unmasking request that names fewer than t survivors, names it dropped or absent,
  names clients outside its roster, names a client both surviving and dropped, or comes a
  second time.
* **Authenticated replies.** Every client reply is signed with the client's session key (from
  round 0; certified in active mode) and echoes a hash of the request it answers. The server
  discards a reply that is forged, altered in transit, or answers an altered request (its
  sender counts as dropped). In semi-honest mode the round-0 keys themselves are not
  authenticated (nothing can be without identities). A client's ``rejected`` claim cannot
  unbalance the masks: every client masks with every partner whose share was forwarded to it.
* **Wrong shares.** A reconstructed b_u is checked against the commitment its owner sent, and an
  s_sk against its public key. Shares beyond t are checked to lie on the same polynomial, and a
  holder whose share does not is named in ``discarded`` and left out. When no t shares give the
  committed secret, the server raises SecAggError rather than return a wrong sum.
* **Malformed messages.** The decoder and every client method raise only SecAggError; the
  server turns any bad reply into ``discarded``. A seeded fuzz test checks that every session
  ends with the exact sum of the survivors it names, or with SecAggError.

Not claimed: privacy against a server that colludes with t or more clients; availability
against a server that simply stops (it can always abort); protection of a seeded client
(a seed repeats its secrets in every session: tests only).
"""

from secure_agg import crypto, shamir
from secure_agg.client import SecAggClient, validate_input
from secure_agg.errors import SecAggError
from secure_agg.graph import default_degree, random_harary_graph
from secure_agg.quantize import Quantization, Quantizer
from secure_agg.rounds import (
    ADVERTISE_KEYS,
    CONSISTENCY_CHECK,
    MASKED_INPUT,
    ROUNDS,
    SHARE_KEYS,
    UNMASKING,
)
from secure_agg.server import SecAggServer
from secure_agg.simulate import SimulationResult, simulate

__all__ = [
    "ADVERTISE_KEYS", "CONSISTENCY_CHECK", "MASKED_INPUT", "ROUNDS", "SHARE_KEYS", "UNMASKING", "Quantization", "Quantizer",
    "SecAggClient", "SecAggError", "SecAggServer", "SimulationResult", "crypto", "default_degree", "random_harary_graph",
    "shamir", "simulate", "validate_input",
]
