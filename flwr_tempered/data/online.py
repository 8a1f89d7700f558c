"""Full benchmark datasets downloaded from the Hugging Face hub through flwr-datasets.

* ``mnist``: ``ylecun/mnist``, 60,000 / 10,000 images ``[N, 1, 28, 28]``.
* ``fashion-mnist``: ``zalando-datasets/fashion_mnist``, 60,000 / 10,000 ``[N, 1, 28, 28]``.
* ``cifar10``: ``uoft-cs/cifar10``, 50,000 / 10,000 images ``[N, 3, 32, 32]``.

Each keeps the hub's standard train/test split in the hub's order (``seed`` is accepted
for a uniform loader signature and ignored), scales pixels to ``float32`` in ``[0, 1]`` and
is cached in-process. Loading needs the network, or a Hugging Face cache filled earlier
(then ``HF_HUB_OFFLINE=1`` makes it skip the network). Any failure is reported as one
``RuntimeError`` that names the dataset and the offline alternatives, instead of the
library's retry noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from flwr_tempered.data._checks import check_seed
from flwr_tempered.data.dataset import Dataset
from flwr_tempered.data.offline import OFFLINE_DATASETS


@dataclass(frozen=True)
class HubSource:
    """Where an online dataset lives on the hub and which columns hold images and labels."""

    hub_id: str
    image_column: str
    label_column: str
    num_classes: int


#: Registry name -> hub source of every online dataset.
HUB_SOURCES: dict[str, HubSource] = {
    "mnist": HubSource("ylecun/mnist", "image", "label", 10),
    "fashion-mnist": HubSource("zalando-datasets/fashion_mnist", "image", "label", 10),
    "cifar10": HubSource("uoft-cs/cifar10", "img", "label", 10),
}


def split_to_tensors(split: Any, image_column: str, label_column: str) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Decode a Hugging Face ``datasets.Dataset`` split into ``(images, labels)``.

    Images become ``float32`` ``[N, C, H, W]`` in ``[0, 1]`` (grey images get ``C = 1``,
    RGB images are moved from ``H, W, C`` to ``C, H, W``); labels become ``int64 [N]``.
    """
    columns = split.with_format("numpy")[:]
    pixels = np.asarray(columns[image_column])
    if pixels.ndim == 3:
        pixels = pixels[:, None, :, :]
    elif pixels.ndim == 4:
        pixels = pixels.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"column {image_column!r} holds arrays of shape {pixels.shape}; expected "
            "[N, H, W] or [N, H, W, C]"
        )
    images = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(255.0)
    labels = torch.from_numpy(np.asarray(columns[label_column], dtype=np.int64))
    return images, labels


@lru_cache(maxsize=2)
def _load_from_hub(name: str) -> Dataset:
    source = HUB_SOURCES[name]
    try:
        from flwr_datasets import FederatedDataset

        federated = FederatedDataset(
            dataset=source.hub_id, partitioners={"train": 1}, shuffle=False
        )
        train = federated.load_split("train")
        test = federated.load_split("test")
    except Exception as exc:  # network, hub and cache errors come in many types
        raise RuntimeError(
            f"cannot load dataset {name!r} (Hugging Face hub id {source.hub_id!r}) through "
            f"flwr-datasets: {type(exc).__name__}: {exc}. It needs the network or a filled "
            f"Hugging Face cache; offline, use one of: {', '.join(OFFLINE_DATASETS)}"
        ) from exc
    train_images, train_labels = split_to_tensors(train, source.image_column, source.label_column)
    test_images, test_labels = split_to_tensors(test, source.image_column, source.label_column)
    return Dataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=source.num_classes,
    )


def mnist(seed: int = 0) -> Dataset:
    """Full MNIST (60,000 / 10,000, ``[N, 1, 28, 28]``); ``seed`` is ignored (fixed split).

    Raises ``RuntimeError`` naming the offline datasets when the download fails.
    """
    check_seed(seed)
    return _load_from_hub("mnist")


def fashion_mnist(seed: int = 0) -> Dataset:
    """Fashion-MNIST (60,000 / 10,000, ``[N, 1, 28, 28]``); ``seed`` is ignored (fixed split).

    Raises ``RuntimeError`` naming the offline datasets when the download fails.
    """
    check_seed(seed)
    return _load_from_hub("fashion-mnist")


def cifar10(seed: int = 0) -> Dataset:
    """CIFAR-10 (50,000 / 10,000, ``[N, 3, 32, 32]``); ``seed`` is ignored (fixed split).

    Raises ``RuntimeError`` naming the offline datasets when the download fails.
    """
    check_seed(seed)
    return _load_from_hub("cifar10")
