"""secure_quickstart: a Flower ServerApp, FedAvg wrapped in secure aggregation.

``SecureAggregation(FedAvg(...))`` is the only change to Flower's quickstart: FedAvg still
samples the nodes and averages, but the average is computed from masked updates, so the
server learns the sum of the clients' updates and nothing about any single one.
"""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from task import load_centralized_dataset, load_model, test

from federated import SecAggParams, SecureAggregation

app = ServerApp()


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """The global model's loss and accuracy on the server's held-out test set."""
    model = load_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, acc = test(model, load_centralized_dataset(), "cpu")
    return MetricRecord({"test_loss": loss, "test_acc": acc})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Runs ``num-server-rounds`` rounds of securely aggregated FedAvg."""
    config = context.run_config
    torch.manual_seed(int(config["seed"]))  # the initial model
    strategy = SecureAggregation(
        FedAvg(fraction_train=float(config["fraction-train"]),
               fraction_evaluate=float(config["fraction-evaluate"])),
        SecAggParams.from_run_config(config),  # every secagg-* key, read into secure aggregation's one model
    )
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(load_model().state_dict()),
                            train_config=ConfigRecord({"lr": float(config["lr"])}),
                            num_rounds=int(config["num-server-rounds"]), evaluate_fn=global_evaluate)
    last = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    survivors = strategy.last_round.survivors
    print(f"final: test_acc={last['test_acc']:.4f} test_loss={last['test_loss']:.4f} "
          f"survivors={survivors} rounds={int(config['num-server-rounds'])}", flush=True)
    torch.save(result.arrays.to_torch_state_dict(), "final_model.pt")
