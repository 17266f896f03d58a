"""FedAvg that survives failed clients: Flower's FedAvg plus a minimum-replies rule.

The averaging itself is :func:`fedavg`, a pure function (sum over clients of
``n_k / n * w_k``, accumulated in the clients' order), so the tests compare it exactly with
Flower's ``aggregate_arrayrecords``. The subclass adds what a long run needs:

- replies are put in partition order before averaging, so the float sum, and therefore the
  final model, does not depend on which client answered first;
- a round counts its failures (error replies and replies that never came before the
  timeout) and raises :class:`TooFewReplies` when fewer than ``min_replies`` succeeded;
- a reply needs only its arrays and ``num-examples``: every other metric (``train_loss``,
  ``eval_acc``, a user's own) is optional and averaged, weighted by examples, when the
  replies carry it, as Flower's ``aggregate_metricrecords`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from federated.arrays import from_numpy, to_numpy

WEIGHT_KEY = "num-examples"
# Per-reply bookkeeping, not something to average over clients.
BOOKKEEPING = ("partition-id", "train-seconds")


class TooFewReplies(RuntimeError):
    """A round got fewer successful training replies than the configured minimum."""


@dataclass
class RoundReplies:
    """What one training round got back."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    missing: int = 0
    slowest_train_seconds: float = 0.0
    error_reasons: tuple[str, ...] = ()

    @property
    def failures(self) -> int:
        return self.errors + self.missing


def fedavg(arrays: Sequence[dict[str, np.ndarray]], num_examples: Sequence[float]) -> dict[str, np.ndarray]:
    """The weighted average of client models, weights proportional to their sample counts.

    Args:
        arrays: One ``{name: array}`` per client, all with the same names and shapes.
        num_examples: Each client's number of training examples.

    Returns:
        ``{name: sum_k (n_k / sum(n)) * arrays[k][name]}``, accumulated in the given order.

    Raises:
        ValueError: for no clients, mismatched lengths, non-positive total weight or
            clients whose arrays have different names.
    """
    if not arrays or len(arrays) != len(num_examples):
        raise ValueError(f"arrays and num_examples must be non-empty and of equal length, got "
                         f"{len(arrays)} and {len(num_examples)}")
    total = float(sum(num_examples))
    if not total > 0:
        raise ValueError(f"num_examples must sum to > 0, got {total}")
    names = list(arrays[0])
    out: dict[str, np.ndarray] = {}
    for client, n in zip(arrays, num_examples, strict=True):
        if list(client) != names:
            raise ValueError(f"every client must send the arrays {names}, got {list(client)}")
        factor = n / total
        for name in names:
            term = client[name] * factor
            out[name] = term if name not in out else out[name] + term
    return out


def aggregate_replies(contents: Sequence[RecordDict], weight_key: str = WEIGHT_KEY) -> ArrayRecord:
    """:func:`fedavg` over reply contents (one ArrayRecord and one MetricRecord each)."""
    arrays = []
    weights = []
    for content in contents:
        record = next(iter(content.array_records.values()))
        arrays.append(to_numpy(record, copy=False))
        weights.append(float(next(iter(content.metric_records.values()))[weight_key]))
    return from_numpy(fedavg(arrays, weights))


def weighted_metrics(records: Sequence[Any], weight_key: str = WEIGHT_KEY) -> dict[str, float]:
    """The example-weighted mean of every numeric metric the records carry.

    Args:
        records: One MetricRecord (or mapping) per reply; each must hold ``weight_key``.
        weight_key: The metric holding the reply's number of examples.

    Returns:
        ``{key: sum_k n_k * m_k[key] / sum_k n_k}`` over the records that hold ``key``, for
        every scalar key but ``weight_key`` and the bookkeeping keys; a reply without
        ``train_loss`` (or any other optional metric) simply contributes nothing to it.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        n = float(record[weight_key])
        for key, value in record.items():
            if key == weight_key or key in BOOKKEEPING or isinstance(value, list):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0.0) + n
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


def _reply_order(msg: Message) -> tuple[int, int]:
    # Partition order when the clients say which partition they hold, else the node id.
    metrics = next(iter(msg.content.metric_records.values()), {})
    return int(metrics.get("partition-id", -1)), int(msg.metadata.src_node_id)


class RobustFedAvg(FedAvg):
    """Flower's FedAvg with deterministic reply order, failure counting and a reply minimum.

    Args:
        min_replies: Fewest successful training replies a round accepts.
        connect_timeout: Seconds to wait for ``min_available_nodes`` before a round.
        **kwargs: Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, min_replies: int = 1, connect_timeout: float = 300.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_replies = min_replies
        self.connect_timeout = connect_timeout
        self.last_round = RoundReplies()
        self._sent = 0

    def wait_for_nodes(self, grid: Grid) -> None:
        """Blocks until ``min_available_nodes`` are connected (at most ``connect_timeout`` s).

        FedAvg sizes its sample from the nodes connected *before* it waits for the minimum,
        so a round that starts while SuperNodes are still registering would sample fewer.
        """
        deadline = time.monotonic() + self.connect_timeout
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {self.min_available_nodes} "
                                   f"nodes connected within {self.connect_timeout:.0f} s")
            time.sleep(0.2)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.wait_for_nodes(grid)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent = len(messages)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self.wait_for_nodes(grid)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True)
        valid.sort(key=_reply_order)
        seconds = [float(next(iter(m.content.metric_records.values())).get("train-seconds", 0.0)) for m in valid]
        self.last_round = RoundReplies(
            sent=self._sent, ok=len(valid), errors=len(errors),
            missing=max(self._sent - len(replies), 0),
            slowest_train_seconds=max(seconds, default=0.0),
            error_reasons=tuple(str(m.error.reason) for m in errors),
        )
        if len(valid) < self.min_replies:
            r = self.last_round
            raise TooFewReplies(
                f"round {server_round}: {r.ok} of {r.sent} clients replied successfully "
                f"({r.errors} failed, {r.missing} timed out), fewer than min_replies={self.min_replies}; "
                f"stopping (the checkpoint of round {server_round - 1} is kept)"
            )
        contents = [m.content for m in valid]
        arrays = aggregate_replies(contents, self.weighted_by_key)
        metrics = weighted_metrics([next(iter(c.metric_records.values())) for c in contents], self.weighted_by_key)
        return arrays, MetricRecord(metrics)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, _ = self._check_and_log_replies(list(replies), is_train=False)
        if not valid:
            return None
        valid.sort(key=_reply_order)
        metrics = weighted_metrics([next(iter(m.content.metric_records.values())) for m in valid],
                                   self.weighted_by_key)
        return MetricRecord({**metrics, "eval_replies": len(valid)})
