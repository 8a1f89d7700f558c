"""Name registries of the dataset loaders and the partitioners, for run configs and the CLI.

``load_dataset("mnist-5k", seed=0)`` and ``partition("dirichlet", labels, 20, alpha=0.5)``
build from a name and keyword parameters; misspelt names and parameters fail early with a
``ValueError`` that lists what is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from flwr_tempered.data import offline, online, partitioners
from flwr_tempered.data.dataset import Dataset
from flwr_tempered.registry import Registry

#: Dataset name -> loader ``(seed) -> Dataset``.
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
DATASETS.add("mnist-5k", offline.mnist_5k)
DATASETS.add("digits", offline.digits)
DATASETS.add("mnist", online.mnist)
DATASETS.add("fashion-mnist", online.fashion_mnist)
DATASETS.add("cifar10", online.cifar10)

#: Partitioner name -> function ``(labels, num_partitions, [seed], **params) -> indices``.
PARTITIONERS: Registry[Callable[..., list[np.ndarray]]] = Registry("partitioner")
PARTITIONERS.add("iid", partitioners.iid)
PARTITIONERS.add("label_sorted", partitioners.label_sorted)
PARTITIONERS.add("dirichlet", partitioners.dirichlet)
PARTITIONERS.add("clique", partitioners.clique_split)


def available_datasets() -> list[str]:
    """Sorted names accepted by :func:`load_dataset` (offline: ``mnist-5k``, ``digits``)."""
    return DATASETS.names()


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Load the dataset registered as ``name``; ``seed`` fixes the offline train/test split.

    Raises ``ValueError`` for an unknown name (listing the valid ones) and ``RuntimeError``
    when an online dataset cannot be downloaded (naming the offline ones).
    """
    dataset: Dataset = DATASETS.build(name, seed=seed)
    return dataset


def available_partitioners() -> list[str]:
    """Sorted names accepted by :func:`partition`."""
    return PARTITIONERS.names()


def partition(
    name: str, labels: Any, num_partitions: int, seed: int = 0, **params: Any
) -> list[np.ndarray]:
    """Split the samples with ``labels`` into ``num_partitions`` index arrays by ``name``.

    ``params`` are the partitioner's own parameters (``alpha`` for ``dirichlet``,
    ``groups`` for ``clique``). ``seed`` is passed to the randomised partitioners and
    ignored by ``label_sorted``, which has no randomness. Raises ``ValueError`` for an
    unknown name or parameter and for invalid values, naming them.
    """
    if "seed" in PARTITIONERS.parameters(name):
        params["seed"] = seed
    parts: list[np.ndarray] = PARTITIONERS.build(
        name, labels=labels, num_partitions=num_partitions, **params
    )
    return parts
