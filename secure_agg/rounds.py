"""The round names of the protocol, in order (``consistency_check`` runs only in active mode)."""

from __future__ import annotations

ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
CONSISTENCY_CHECK = "consistency_check"
UNMASKING = "unmasking"
ROUNDS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY_CHECK, UNMASKING)
DONE = "done"
