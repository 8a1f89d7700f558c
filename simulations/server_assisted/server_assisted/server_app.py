"""The ServerApp: Flower's usual ``strategy.start`` loop; the strategy comes from the run
config, so ``strategy = "median"`` swaps FedAvg for a robust rule with no other change."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_tempered.strategies import FLOWER_STRATEGIES, make_flower_strategy, make_server_strategy
from server_assisted.task import Net, root_loader, test, test_loader, train

app = ServerApp()


def central_evaluation(seed: int, model: str):  # type: ignore[no-untyped-def]
    """The global model's loss and accuracy on the 1,000 test images, every round."""
    loader = test_loader(seed)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = Net(model=model)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(net, loader)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    return evaluate


def root_trainer(samples: int, epochs: int, lr: float, seed: int,  # type: ignore[no-untyped-def]
                 model: str):
    """FLTrust's server update: the global model trained on the server's root data."""
    loader = root_loader(samples, seed)

    def train_on_root(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        net = Net(model=model)
        net.load_state_dict(arrays.to_torch_state_dict())
        train(net, loader, epochs, lr)
        return ArrayRecord(net.state_dict())

    return train_on_root


def build_strategy(context: Context) -> FedAvg:
    """The strategy named by the run config (``fedavg`` is Flower's own; ``fedadam`` and
    Flower's other optimizers too, and ``fedadam+median`` is ``robust(FedAdam(...),
    rule="median")``, its rule settings in ``rule_args``)."""
    cfg = context.run_config
    options = json.loads(str(cfg["strategy-args"]))
    name = str(cfg["strategy"])
    if name == "fltrust":
        options.setdefault("root_train_fn", root_trainer(
            int(cfg["root-samples"]), int(cfg["root-epochs"]), float(cfg["lr"]),
            int(cfg["seed"]), str(cfg["model"])))
    by_name = (make_flower_strategy if name.partition("+")[0] in FLOWER_STRATEGIES
               else make_server_strategy)
    return by_name(name, fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                   **options)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds and report the global model's accuracy."""
    cfg = context.run_config
    torch.manual_seed(int(cfg["seed"]))
    strategy = build_strategy(context)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net(int(cfg["seed"]), str(cfg["model"])).state_dict()),
        train_config=ConfigRecord({"lr": float(cfg["lr"])}),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_evaluation(int(cfg["seed"]), str(cfg["model"])),
    )
    accuracy = {int(r): float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
    final = accuracy[max(accuracy)]
    print(f"server-assisted: strategy={cfg['strategy']} attack={cfg['attack']} "
          f"final accuracy {100 * final:.1f}%", flush=True)
    if str(cfg["results"]):
        path = Path(str(cfg["results"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"strategy": cfg["strategy"], "attack": cfg["attack"],
                                    "accuracy": accuracy}, indent=1))
