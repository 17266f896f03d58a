"""SecureAggregation._call's backstop for a server round that raises something other than SecAggError.

Replies are signed (encoded body followed by a 64-byte Ed25519 signature), so the backstop must
read them as signed replies: reading them with the plain decoder would throw away every valid
reply and turn one bad reply into a failed round.
"""

from __future__ import annotations

from typing import Any

import pytest
from flwr.serverapp.strategy import FedAvg

from federated import SecureAggregation
from secure_agg import SecAggClient, SecAggError, SecAggServer

BAD = 99  # the id of the client whose reply makes the server round raise


def _advertised(n: int) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, bytes]]:
    server = SecAggServer(list(range(n)), threshold=n // 2 + 1, dim=8, seed=1)
    clients = {u: SecAggClient(u, seed=u) for u in range(n)}
    requests = server.advertise_keys_requests()
    return server, clients, {u: clients[u].advertise_keys(requests[u]) for u in range(n)}


def _raises_on_garbage(method: Any) -> Any:
    """The real server round, except that an unreadable reply makes it raise a TypeError
    (standing in for any unexpected exception a future change could let escape)."""
    def call(responses: dict[int, bytes]) -> Any:
        if BAD in responses:
            raise TypeError("unexpected failure on a malformed reply")
        return method(responses)
    return call


def test_backstop_keeps_every_signed_reply_and_drops_the_bad_one() -> None:
    server, clients, replies = _advertised(4)
    replies[BAD] = b"\x07" * 40  # not even long enough to carry a signature
    wrapper = SecureAggregation(FedAvg())
    rosters = wrapper._call(_raises_on_garbage(server.share_keys_requests), replies)
    # All four signed replies survive the backstop: every client gets a roster of all four.
    assert sorted(rosters) == [0, 1, 2, 3]
    assert BAD in wrapper.last_round.discarded
    assert not set(range(4)) & set(wrapper.last_round.discarded)
    assert sorted(server.alive) == [0, 1, 2, 3]
    # The rosters are real: every client accepts its own and answers the next round.
    for u, request in rosters.items():
        assert isinstance(clients[u].share_keys(request), bytes)


def test_backstop_still_stops_a_round_the_protocol_refuses() -> None:
    server, _, replies = _advertised(4)
    for u in (1, 2, 3):
        replies[u] = replies[u][:-1] + bytes([replies[u][-1] ^ 1])  # signatures that do not verify
    replies[BAD] = b"\x07" * 40
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        SecureAggregation(FedAvg())._call(_raises_on_garbage(server.share_keys_requests), replies)
