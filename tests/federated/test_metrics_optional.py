"""A reply needs only its arrays and ``num-examples``: train_loss and every other metric are optional."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from federated.strategy import RobustFedAvg, weighted_metrics


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message() reads the sender's identity; a ServerApp process sets it (as flwr's compat layer does)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _replies(contents: list[RecordDict]) -> list[Message]:
    out = []
    for i, content in enumerate(contents):
        request = Message(content=RecordDict(), dst_node_id=10 + i, message_type="train")
        out.append(Message(content=content, reply_to=request))
    return out


def test_train_replies_with_only_num_examples_average_exactly(task_identity: None) -> None:
    rng = np.random.default_rng(0)
    contents = [RecordDict({"arrays": ArrayRecord({"w": Array(rng.normal(size=(3, 2)).astype(np.float32))}),
                            "metrics": MetricRecord({"num-examples": n})}) for n in (5, 12, 40)]
    strategy = RobustFedAvg(min_replies=3)
    arrays, metrics = strategy.aggregate_train(1, _replies(contents))
    expected = aggregate_arrayrecords(contents, "num-examples")
    assert np.array_equal(arrays["w"].numpy(), expected["w"].numpy())
    assert dict(metrics) == {}  # nothing to average, and no KeyError for the missing train_loss


def test_evaluate_replies_average_whatever_metrics_they_carry(task_identity: None) -> None:
    contents = [RecordDict({"metrics": MetricRecord({"num-examples": n, "accuracy": a})})
                for n, a in ((10, 0.5), (30, 0.9))]
    out = RobustFedAvg().aggregate_evaluate(1, _replies(contents))
    assert out["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert out["eval_replies"] == 2 and "eval_acc" not in out


def test_weighted_metrics_skips_bookkeeping_and_absent_keys() -> None:
    records = [{"num-examples": 1, "train_loss": 2.0, "partition-id": 0, "train-seconds": 9.0},
               {"num-examples": 3, "train_loss": 4.0, "partition-id": 1, "train-seconds": 1.0}]
    assert weighted_metrics(records) == {"train_loss": pytest.approx((2.0 + 12.0) / 4)}
    assert weighted_metrics([{"num-examples": 2}]) == {}


@pytest.mark.slow
def test_a_user_client_that_sends_only_num_examples_runs_on_flower() -> None:
    # A user's own ClientApp: each client adds (partition + 1) to every weight and reports only
    # its example count, so the FedAvg model after each round is known exactly.
    from federated.server_app import initial_weights, make_server_app
    from federated.settings import FedSettings
    from federated.simulation import run_apps

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        arrays = ArrayRecord({k: Array(v.numpy() + np.float32(pid + 1)) for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10 * (pid + 1)})}),
                       reply_to=msg)

    settings = FedSettings(num_partitions=2, num_server_rounds=2, fraction_evaluate=0.0, hidden=4,
                           round_timeout=300.0)
    sink: list = []
    result = run_apps(make_server_app(settings.to_run_config(), sink=sink), app, 2, sink)
    start = initial_weights(settings)
    shift = np.float32((10 * 1 + 20 * 2) / 30)  # the example-weighted mean of +1 and +2
    for key, value in start.items():
        np.testing.assert_allclose(result["weights"][key], value + 2 * shift, rtol=0, atol=1e-5)
    assert [r["train_loss"] for r in result["history"]] == [None, None, None]
    assert [r["replies"] for r in result["history"][1:]] == [2, 2]
