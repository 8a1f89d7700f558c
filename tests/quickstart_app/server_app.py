"""quickstart_app: the ServerApp (Flower's ``server_app.py``): FedAvg through
``strategy.start``, and the final model saved from ``result.arrays``."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quickstart_app.task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of federated training and save the final model."""
    fraction_train = float(context.run_config["fraction-train"])
    num_rounds = int(context.run_config["num-server-rounds"])
    lr = float(context.run_config["lr"])

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    strategy = FedAvg(fraction_train=fraction_train)

    result = strategy.start(grid=grid, initial_arrays=arrays,
                            train_config=ConfigRecord({"lr": lr}), num_rounds=num_rounds)

    torch.save(result.arrays.to_torch_state_dict(), str(context.run_config["final-model"]))
