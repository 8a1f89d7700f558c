"""$server_doc"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp$strategy_imports

from $package.task import $task_names

app = ServerApp()


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """The global model's loss and accuracy on all 1,000 test images."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_centralized_data(), "cpu")
    return MetricRecord({"loss": loss, "accuracy": accuracy})
$helpers

@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of federated training and save the final model."""
    fraction_train = float(context.run_config["fraction-train"])
    num_rounds = int(context.run_config["num-server-rounds"])
    lr = float(context.run_config["lr"])

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

$strategy_comment
    $strategy_statement

    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    path = Path(str(context.run_config["final-model"])).resolve()
    torch.save(result.arrays.to_torch_state_dict(), path)
    scores = result.evaluate_metrics_serverapp
    accuracy = float(scores[max(scores)]["accuracy"])
    print(f"Final model saved to {path} (test accuracy {accuracy:.1%})", flush=True)
