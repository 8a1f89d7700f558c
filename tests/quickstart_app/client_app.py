"""quickstart_app: the ClientApp (Flower's ``client_app.py``): train and evaluate the
received global model on this SuperNode's partition."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from quickstart_app.task import Net, load_data
from quickstart_app.task import test as test_fn
from quickstart_app.task import train as train_fn

device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

app = ClientApp()


def _model_and_data(msg: Message,
                    context: Context) -> tuple[Net, tuple[DataLoader, DataLoader]]:
    """The received global model and this node's loaders."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loaders = load_data(int(context.node_config["partition-id"]),
                        int(context.node_config["num-partitions"]))
    return model, loaders


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on the local data; reply with it and the training loss."""
    model, (trainloader, _) = _model_and_data(msg, context)
    train_loss = train_fn(model, trainloader, int(context.run_config["local-epochs"]),
                          float(msg.content["config"]["lr"]), device)
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local validation data."""
    model, (_, valloader) = _model_and_data(msg, context)
    eval_loss, eval_acc = test_fn(model, valloader, device)
    metrics = MetricRecord({"eval_loss": eval_loss, "eval_acc": eval_acc,
                            "num-examples": len(valloader.dataset)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
