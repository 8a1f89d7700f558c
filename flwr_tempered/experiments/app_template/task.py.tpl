"""$app_name: the model, the data and the training loops.

The data is MNIST-5k: 4,000 training and 1,000 test images of handwritten digits that ship
with flwr-tempered (nothing is downloaded), split IID over the SuperNodes. Each SuperNode
validates on its share of the test images; the ServerApp scores the global model on all
of them.
"""

from __future__ import annotations

from functools import cache

import torch
from flwr_tempered.data import Dataset, load_dataset, partition
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small CNN for 28x28 grey images: two 5x5 convolutions with max pooling, then a
    linear layer (about 6,000 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a batch ``[B, 1, 28, 28]``."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


@cache
def _mnist() -> Dataset:
    return load_dataset("mnist-5k", seed=0)


@cache
def _partitions(num_partitions: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each partition's training and test indices (IID, the same on every SuperNode)."""
    data = _mnist()
    train = partition("iid", data.train_labels, num_partitions, seed=0)
    test = partition("iid", data.test_labels, num_partitions, seed=0)
    return [torch.as_tensor(p) for p in train], [torch.as_tensor(p) for p in test]


def load_data(partition_id: int, num_partitions: int,
              batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    """This partition's training loader and its share of the test images."""
    data = _mnist()
    train_parts, test_parts = _partitions(num_partitions)
    train_idx, test_idx = train_parts[partition_id], test_parts[partition_id]
    trainloader = DataLoader(
        TensorDataset(data.train_images[train_idx], data.train_labels[train_idx]),
        batch_size=batch_size, shuffle=True)
    valloader = DataLoader(
        TensorDataset(data.test_images[test_idx], data.test_labels[test_idx]),
        batch_size=batch_size)
    return trainloader, valloader


def load_centralized_data(batch_size: int = 500) -> DataLoader:
    """All 1,000 test images (the ServerApp's evaluation)."""
    data = _mnist()
    return DataLoader(TensorDataset(data.test_images, data.test_labels), batch_size=batch_size)


def train(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float,
          device: torch.device | str) -> float:
    """SGD with momentum for ``epochs`` passes over ``trainloader``; the mean batch loss."""
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    running, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running += loss.item()
            batches += 1
    return running / max(batches, 1)


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
