"""The four round names of the protocol, in order."""

from __future__ import annotations

ADVERTISE_KEYS = "advertise_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
UNMASKING = "unmasking"
ROUNDS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASKING)
DONE = "done"
