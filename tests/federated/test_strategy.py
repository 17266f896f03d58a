"""Our FedAvg average equals Flower's aggregate_arrayrecords; failures and the reply minimum."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from federated.strategy import RobustFedAvg, TooFewReplies, aggregate_replies, fedavg


def _reply(rng: np.random.Generator, n: int, pid: int) -> RecordDict:
    arrays = ArrayRecord({"w": Array(rng.normal(size=(4, 3)).astype(np.float32)),
                          "b": Array(rng.normal(size=3).astype(np.float32))})
    metrics = MetricRecord({"train_loss": float(rng.random()), "num-examples": n, "partition-id": pid,
                            "train-seconds": 0.0})
    return RecordDict({"arrays": arrays, "metrics": metrics})


def test_fedavg_equals_flowers_aggregate_arrayrecords_exactly() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        replies = [_reply(rng, int(rng.integers(1, 200)), pid) for pid in range(2 + trial)]
        ours = aggregate_replies(replies, "num-examples")
        theirs = aggregate_arrayrecords(replies, "num-examples")
        assert list(ours) == list(theirs)
        for key in ours:
            assert np.array_equal(ours[key].numpy(), theirs[key].numpy())


def test_fedavg_is_the_sample_weighted_mean() -> None:
    a = {"w": np.array([1.0, 2.0])}
    b = {"w": np.array([3.0, 6.0])}
    out = fedavg([a, b], [1, 3])
    assert np.allclose(out["w"], [(1 + 9) / 4, (2 + 18) / 4])
    with pytest.raises(ValueError, match="num_examples"):
        fedavg([a], [0])
    with pytest.raises(ValueError, match="arrays"):
        fedavg([a, {"v": np.zeros(2)}], [1, 1])


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message() reads the sender's identity; a ServerApp process sets it (as flwr's compat layer does)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _as_messages(contents: list[RecordDict], errors: int) -> list[Message]:
    out = []
    for i, c in enumerate(contents):
        req = Message(content=RecordDict(), dst_node_id=10 + i, message_type="train")
        out.append(Message(content=c, reply_to=req))
    for i in range(errors):
        req = Message(content=RecordDict(), dst_node_id=100 + i, message_type="train")
        out.append(Message(Error(code=0, reason="client raised"), reply_to=req))
    return out


def test_round_with_a_failed_client_averages_the_others_in_partition_order() -> None:
    rng = np.random.default_rng(1)
    contents = [_reply(rng, 30 + pid, pid) for pid in range(3)]
    strategy = RobustFedAvg(min_replies=2)
    strategy._sent = 4
    # Replies arrive in any order; the average is taken in partition order.
    arrays, metrics = strategy.aggregate_train(1, _as_messages(contents[::-1], errors=1))
    expected = aggregate_arrayrecords(contents, "num-examples")
    for key in expected:
        assert np.array_equal(arrays[key].numpy(), expected[key].numpy())
    assert strategy.last_round.ok == 3 and strategy.last_round.errors == 1 and strategy.last_round.failures == 1
    n = np.array([30, 31, 32])
    losses = [c["metrics"]["train_loss"] for c in contents]
    assert metrics["train_loss"] == pytest.approx(float(np.dot(losses, n) / n.sum()))


def test_below_the_minimum_the_round_raises_a_clear_error() -> None:
    rng = np.random.default_rng(2)
    strategy = RobustFedAvg(min_replies=3)
    strategy._sent = 4
    with pytest.raises(TooFewReplies, match=r"round 5: 2 of 4 .*1 failed, 1 timed out.*min_replies=3"):
        strategy.aggregate_train(5, _as_messages([_reply(rng, 10, 0), _reply(rng, 10, 1)], errors=1))
