"""One settings model (FedSettings, with SecAggParams inside) is what the Flower apps read from
the run config and what the experiment kinds hand them: checked by what the apps do with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from federated.secure_aggregation import SecAggParams
from federated.settings import Fault, FedSettings

REPO = Path(__file__).resolve().parents[2]


def _train_message(arrays, server_round: int):
    from flwr.app import ConfigRecord, Message, RecordDict

    msg = Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_message_id"] = "m1"  # what the engines set before a ClientApp sees it
    return msg


def test_the_clientapp_trains_with_the_settings_an_experiment_kind_hands_it(flower_identity: None) -> None:
    # Prepare: an experiment config whose values all differ from the defaults that matter here.
    from flwr.app import Context, RecordDict

    from experiments.runner import prepare
    from federated.arrays import to_numpy
    from federated.client_app import app, local_update, new_model
    from federated.task import get_weights

    _, cfg, _ = prepare("fedavg_digits", overrides=[
        "num_clients=3", "rounds=2", "lr=0.2", "local_epochs=2", "batch_size=8", "hidden=6", "seed=4",
        "partitionings=[{partitioner: iid}]"])
    settings = cfg.settings_for(cfg.partitionings[0], "")
    assert (settings.num_partitions, settings.lr, settings.hidden, settings.partitioner) == (3, 0.2, 6, "iid")

    # Execute: the project's ClientApp (as `flwr run` loads it) with that run config.
    initial = get_weights(new_model(settings))
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config=settings.to_run_config(),
                      node_config={"partition-id": 1, "num-partitions": 3})
    reply = app(_train_message(initial, 2), context)

    # Assert: the update is the one these settings give, and not the defaults' one.
    assert not reply.has_error(), reply.error
    expected = new_model(settings)
    n, loss = local_update(settings, 1, 2, expected)
    metrics = reply.content["metrics"]
    assert (metrics["num-examples"], metrics["train_loss"]) == (n, loss)
    for key, value in to_numpy(get_weights(expected)).items():
        assert np.array_equal(reply.content["arrays"][key].numpy(), value), key
    assert n == 479  # 1437 training digits in three IID shares (ten, the default, would give ~144)


def test_pyproject_run_config_through_flowers_own_fusion_is_read_into_the_model() -> None:
    from flwr.common.config import get_fused_config_from_dir

    run_config = get_fused_config_from_dir(REPO, {"num-server-rounds": 7, "aggregation": "secure"})
    settings = FedSettings.from_run_config(run_config)
    assert (settings.num_server_rounds, settings.aggregation) == (7, "secure")
    # Every other field is FedSettings' own default: nothing else holds one.
    assert settings.replace(num_server_rounds=3, aggregation="plain") == FedSettings()
    with pytest.raises(ValueError, match="not present"):  # flwr refuses a key the project lacks
        get_fused_config_from_dir(REPO, {"rounds": 7})


def test_secure_kind_and_run_config_give_the_server_the_same_secagg_model() -> None:
    from experiments.runner import prepare
    from federated.server_app import make_strategy

    _, cfg, _ = prepare("secagg_fedavg", overrides=["clip=2.5", "neighbours=2", "num_clients=4", "seed=9"])
    settings = cfg.settings("secure", "")
    strategy = make_strategy(settings)
    assert strategy.params == SecAggParams(clip=2.5, neighbours=2, seed=9)
    # What the ServerApp reads back from the run config the simulation hands it.
    assert FedSettings.from_run_config(settings.to_run_config()) == settings


def test_run_config_round_trip_and_int_to_float() -> None:
    s = FedSettings(num_partitions=4, alpha=0.3, faults="2:1:raise, 3:0:exit", secagg=SecAggParams(bits=20))
    assert FedSettings.from_run_config(s.to_run_config()) == s
    assert FedSettings.from_run_config({"alpha": 1}).alpha == 1.0
    assert s.fault_list() == [Fault(2, 1, "raise"), Fault(3, 0, "exit")]
    assert s.fault_for(3, 0) == "exit" and s.fault_for(3, 1) is None
    with pytest.raises(ValidationError, match="frozen"):  # a change goes through replace(), which validates
        s.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="lr: Input should be greater than 0"):
        s.replace(lr=-1.0)


@pytest.mark.parametrize(("config", "match"), [
    ({"rounds": 3}, r"unknown run-config key 'rounds'"),
    ({"num-server-rounds": "3"}, r"run-config key 'num-server-rounds': Input should be a valid integer"),
    ({"faults": "2-1-raise"}, "ROUND:PARTITION:MODE"),
    ({"alpha": 0.0}, r"run-config key 'alpha': Input should be greater than 0"),
    ({"lr": float("nan")}, r"run-config key 'lr': Input should be a finite number"),
    ({"num-partitions": 2, "min-replies": 3}, "min_replies must be <= num_partitions"),
    ({"secagg-clip": -1.0}, r"run-config key 'secagg-clip': Input should be greater than 0"),
    ({"secagg-active": "yes"}, r"run-config key 'secagg-active'"),
    ({"secagg-foo": 1}, r"unknown run-config key 'secagg-foo'"),
])
def test_bad_run_config_is_rejected_in_one_line(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        FedSettings.from_run_config(config)
    assert "\n" not in str(info.value)


def test_experiment_fields_take_the_models_bounds() -> None:
    from experiments import UserError
    from experiments.runner import prepare

    # FedSettings bounds lr (> 0, finite) and num_partitions (<= 1000); the kinds take them from there.
    for kind, override in [("fedavg_digits", "lr=0"), ("secagg_fedavg", "lr=.inf"),
                           ("fedavg_digits", "num_clients=1001"), ("secagg_fedavg", "clip=0")]:
        with pytest.raises(UserError, match=override.split("=")[0]):
            prepare(kind, overrides=[override])
