"""The task: a small CNN (or logistic regression) on offline MNIST-5k (4,000 training and
1,000 test images that ship with the package), split IID over the SuperNodes."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flwr_tempered.data import Dataset, load_dataset, partition
from flwr_tempered.models import build_model

MODELS = ("small_cnn", "logistic_regression")


def Net(seed: int = 0, model: str = "small_cnn") -> nn.Module:  # noqa: N802 (Flower's name)
    """The model: flwr-tempered's small CNN (28,874 parameters) or multinomial logistic
    regression (7,850 parameters, a much cheaper step)."""
    if model == "logistic_regression":
        return build_model(model, seed=seed, in_features=28 * 28, num_classes=10)
    if model == "small_cnn":
        return build_model(model, seed=seed)
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


@cache
def _dataset(seed: int) -> Dataset:
    return load_dataset("mnist-5k", seed=seed)


@cache
def _partitions(num_partitions: int, seed: int) -> tuple[tuple[int, ...], ...]:
    parts = partition("iid", _dataset(seed).train_labels, num_partitions, seed=seed)
    return tuple(tuple(int(i) for i in part) for part in parts)


def load_data(partition_id: int, num_partitions: int, batch_size: int = 32,
              seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """This partition's training loader and the shared test loader."""
    data = _dataset(seed)
    indices = torch.tensor(_partitions(num_partitions, seed)[partition_id])
    generator = torch.Generator().manual_seed(seed * 100_003 + partition_id)
    train = DataLoader(TensorDataset(data.train_images[indices], data.train_labels[indices]),
                       batch_size=batch_size, shuffle=True, generator=generator)
    return train, test_loader(seed)


def test_loader(seed: int = 0, batch_size: int = 500) -> DataLoader:
    """The 1,000 test images (the server's central evaluation)."""
    data = _dataset(seed)
    return DataLoader(TensorDataset(data.test_images, data.test_labels), batch_size=batch_size)


def root_loader(samples: int, seed: int = 0, batch_size: int = 32) -> DataLoader:
    """FLTrust's root data set: the first ``samples`` clean training images."""
    data = _dataset(seed)
    return DataLoader(TensorDataset(data.train_images[:samples], data.train_labels[:samples]),
                      batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def train(net: nn.Module, loader: DataLoader, epochs: int, lr: float,
          device: torch.device | str = "cpu") -> float:
    """SGD with momentum 0.9 for ``epochs`` passes; the mean training loss."""
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def test(net: nn.Module, loader: DataLoader,
         device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` on ``loader`` (NaN-safe: a broken model scores 0)."""
    net.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, count = 0.0, 0, 0
    for images, labels in loader:
        logits = net(images.to(device))
        loss += float(criterion(logits, labels.to(device)))
        correct += int((logits.argmax(dim=1) == labels.to(device)).sum())
        count += len(labels)
    return loss / count, correct / count
