"""Datasets and partitioners for decentralized learning experiments.

A :class:`Dataset` holds ``float32`` images in ``[0, 1]`` shaped ``[N, C, H, W]`` and
``int64`` labels, split into train and test. Load one by name with :func:`load_dataset`:
``mnist-5k`` and ``digits`` ship inside installed packages (offline); ``mnist``,
``fashion-mnist`` and ``cifar10`` come from the Hugging Face hub through flwr-datasets.

A partitioner says which training samples each node holds: :func:`partition` by name
(``iid``, ``label_sorted``, ``dirichlet``, ``clique``) or the functions directly.
"""

from flwr_tempered.data.dataset import Dataset
from flwr_tempered.data.offline import OFFLINE_DATASETS, digits, mnist_5k, stratified_split
from flwr_tempered.data.online import HUB_SOURCES, cifar10, fashion_mnist, mnist
from flwr_tempered.data.partitioners import clique_split, dirichlet, iid, label_sorted
from flwr_tempered.data.registry import (
    DATASETS,
    PARTITIONERS,
    available_datasets,
    available_partitioners,
    load_dataset,
    partition,
)

__all__ = [
    "DATASETS",
    "HUB_SOURCES",
    "OFFLINE_DATASETS",
    "PARTITIONERS",
    "Dataset",
    "available_datasets",
    "available_partitioners",
    "cifar10",
    "clique_split",
    "digits",
    "dirichlet",
    "fashion_mnist",
    "iid",
    "label_sorted",
    "load_dataset",
    "mnist",
    "mnist_5k",
    "partition",
    "stratified_split",
]
