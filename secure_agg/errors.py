"""The one error type of the protocol: an impossible request or a message that must be refused."""

from __future__ import annotations


class SecAggError(ValueError):
    """Raised when secure aggregation cannot proceed safely; the message says why.

    It is a ``ValueError`` so callers that validate input generically still catch it.
    """
