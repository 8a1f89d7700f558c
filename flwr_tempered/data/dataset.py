"""The dataset value type shared by every loader: train and test tensors plus metadata.

Images are kept as ``float32`` scaled to ``[0, 1]`` and are *not* normalised per channel:
the scaling is the same for every source, so models, attacks (a backdoor trigger is "a
bright square", i.e. value 1.0) and plots can rely on it, while a model that wants
standardised inputs can subtract its own mean and divide by its own standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image-classification dataset, split into train and test.

    Attributes:
        name: the registry name the dataset was loaded under (e.g. ``"mnist-5k"``).
        train_images: ``Tensor[N, C, H, W]``, ``float32`` in ``[0, 1]``.
        train_labels: ``Tensor[N]``, ``int64`` in ``0..num_classes-1``.
        test_images: ``Tensor[M, C, H, W]``, same layout as ``train_images``.
        test_labels: ``Tensor[M]``, ``int64``.
        num_classes: number of classes.

    Loaders cache datasets in-process and hand the *same* object to every simulated node,
    so treat the tensors as read-only: index them (``train_images[indices]`` copies) rather
    than modifying them in place. The value is frozen, compares by identity, and its
    ``repr`` summarises shapes instead of printing the tensors.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        """Check shapes, dtypes and label range so that a broken loader fails at once."""
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.ndim != 4 or images.dtype != torch.float32:
                raise ValueError(
                    f"{self.name}: {split} images must be a float32 Tensor[N, C, H, W], got "
                    f"{images.dtype} of shape {tuple(images.shape)}"
                )
            if labels.ndim != 1 or labels.dtype != torch.int64 or len(labels) != len(images):
                raise ValueError(
                    f"{self.name}: {split} labels must be an int64 Tensor[{len(images)}], got "
                    f"{labels.dtype} of shape {tuple(labels.shape)}"
                )
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.name}: {split} labels must lie in 0..{self.num_classes - 1}, got "
                    f"{int(labels.min())}..{int(labels.max())}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test "
                f"images {tuple(self.test_images.shape[1:])} differ in shape"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        channels, height, width = self.train_images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return len(self.test_labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
