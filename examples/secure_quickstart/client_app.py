"""secure_quickstart: a Flower ClientApp, plain as in Flower's quickstart, plus one mod.

The only line secure aggregation adds is ``mods=[secure_agg_mod]``: the mod answers the
protocol's messages itself and, when a round trains, calls ``train`` below and sends the
server its update masked, so the server can only ever add it to the others.
"""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from task import load_data, load_model
from task import test as test_fn
from task import train as train_fn

from federated import secure_agg_mod

app = ClientApp(mods=[secure_agg_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Trains the received model on this node's data."""
    model = load_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainloader, _ = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    loss = train_fn(model, trainloader, int(context.run_config["local-epochs"]), float(msg.content["config"]["lr"]),
                    device)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluates the received model on this node's test share."""
    model = load_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, testloader = load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    loss, acc = test_fn(model, testloader, device)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(testloader.dataset)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
