"""The ClientApp: ordinary Flower training code, plus the attack chosen by run config.

``honest_app`` is what any Flower user already has. ``app`` adds one thing: when the run
config names an attack, a share of the nodes run it, through flwr-tempered's
``malicious_clientapp`` wrapper (the honest code is not touched).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flwr_tempered.aggregators import Rule, get_rule
from flwr_tempered.attacks import attack_class
from flwr_tempered.clients import malicious_clientapp
from flwr_tempered.strategies import RobustFedAvg
from server_assisted.task import Net, load_data, test, train

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

honest_app = ClientApp()


def _received_model_and_data(msg: Message, context: Context) -> tuple[nn.Module, Any, Any]:
    """The global model from the message, and this node's train and test loaders."""
    cfg = context.run_config
    net = Net(model=str(cfg["model"]))
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, testloader = load_data(int(context.node_config["partition-id"]),
                                        int(context.node_config["num-partitions"]),
                                        int(cfg["batch-size"]), int(cfg["seed"]))
    return net, trainloader, testloader


@honest_app.train()
def honest_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition."""
    cfg = context.run_config
    net, trainloader, _ = _received_model_and_data(msg, context)
    loss = train(net, trainloader, int(cfg["local-epochs"]), float(cfg["lr"]), DEVICE)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@honest_app.evaluate()
def honest_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the test set."""
    net, _, testloader = _received_model_and_data(msg, context)
    loss, accuracy = test(net, testloader, DEVICE)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy,
                            "num-examples": len(testloader.dataset)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _server_rule(context: Context, num_partitions: int) -> Rule:
    """The rule of the run's server strategy, for attacks that run it (``optimal_alie``,
    ``optimal_ipm``), built as the ServerApp builds it (FLTrust's root trainer included);
    Flower's FedAvg and its optimizers average."""
    from server_assisted.server_app import build_strategy

    built = build_strategy(context)
    if isinstance(built, RobustFedAvg):
        return built.rule_for_round(num_partitions)
    return get_rule("mean")


#: The wrapped app of each run config and federation size (a wrapper keeps the round's
#: honest models, so it must live as long as the run).
_APPS: dict[tuple[Any, ...], ClientApp] = {}


def _configured(context: Context) -> ClientApp:
    cfg = context.run_config
    attack = str(cfg["attack"])
    if attack == "none":
        return honest_app
    num_partitions = int(context.node_config.get("num-partitions", 0))
    key = (tuple(sorted((k, str(v)) for k, v in cfg.items())), num_partitions)
    if key not in _APPS:
        spec = {"name": attack, **json.loads(str(cfg["attack-args"]))}
        rule = (_server_rule(context, num_partitions)
                if attack_class(attack).needs_rule else None)
        _APPS[key] = malicious_clientapp(
            honest_app, spec, fraction=float(cfg["attack-fraction"]), seed=int(cfg["seed"]),
            view=str(cfg["attack-view"]), rule=rule)
    return _APPS[key]


app = ClientApp()


@app.train()
def train_(msg: Message, context: Context) -> Message:
    """Honest training, or the configured attack on the malicious nodes."""
    return _configured(context)(msg, context)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    """Evaluation is honest on every node."""
    return _configured(context)(msg, context)
