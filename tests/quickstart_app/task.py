"""quickstart_app: the model, the data and the training loops (Flower's ``task.py``).

The data is scikit-learn's 8x8 handwritten digits (1,437 training and 360 test images,
offline through ``flwr_tempered.data``), split IID over the SuperNodes; each node validates
on its share of the test images. The model is a small MLP, so that a whole run of
ten in-process SuperNodes takes a fraction of a second.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flwr_tempered.data import Dataset, load_dataset, partition


class Net(nn.Module):
    """An MLP for 8x8 grey images: 64 inputs, 32 hidden units, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a batch ``[B, 1, 8, 8]``."""
        return self.out(torch.relu(self.hidden(x.flatten(1))))


@cache
def _digits() -> Dataset:
    return load_dataset("digits", seed=0)


@cache
def _split(num_partitions: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each partition's training and test indices (IID)."""
    data = _digits()
    train = partition("iid", data.train_labels, num_partitions)
    test = partition("iid", data.test_labels, num_partitions)
    return [torch.as_tensor(p) for p in train], [torch.as_tensor(p) for p in test]


def load_data(partition_id: int, num_partitions: int,
              batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """This partition's training loader and its share of the test images."""
    data = _digits()
    train_parts, test_parts = _split(num_partitions)
    train_idx, test_idx = train_parts[partition_id], test_parts[partition_id]
    trainloader = DataLoader(
        TensorDataset(data.train_images[train_idx], data.train_labels[train_idx]),
        batch_size=batch_size, shuffle=True)
    valloader = DataLoader(
        TensorDataset(data.test_images[test_idx], data.test_labels[test_idx]),
        batch_size=batch_size)
    return trainloader, valloader


def load_test_data() -> DataLoader:
    """All 360 test images (to score a saved model)."""
    data = _digits()
    return DataLoader(TensorDataset(data.test_images, data.test_labels), batch_size=360)


def train(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float,
          device: torch.device | str) -> float:
    """SGD with momentum for ``epochs`` passes over ``trainloader``; the mean batch loss."""
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def test(net: nn.Module, testloader: DataLoader,
         device: torch.device | str) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` on ``testloader``."""
    net.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, seen = 0.0, 0, 0
    for images, labels in testloader:
        logits = net(images.to(device))
        loss += criterion(logits, labels.to(device)).item()
        correct += int((logits.argmax(1) == labels.to(device)).sum())
        seen += len(labels)
    return loss / seen, correct / seen
