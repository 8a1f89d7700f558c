"""Poison the batches an unmodified ClientApp draws from torch ``DataLoader``s.

A data-poisoning attacker trains honestly on poisoned data. To do that inside someone
else's ClientApp without touching its code, :func:`poisoned_dataloaders` swaps
``torch.utils.data.DataLoader.__iter__`` for the duration of one call, so that every batch
the app draws is passed through the attack's ``poison(images, labels)`` first.

Recognised batch shapes: a tuple or list ``(images, labels, ...)``, and a mapping with an
image key (``img``, ``image``, ``images``, ``pixel_values``, ``x``) and a label key
(``label``, ``labels``, ``y``, ``target``, ``targets``), as produced by flwr-datasets'
``with_transform`` pipelines. Any other batch raises ``ValueError`` naming its type, so an
attack never silently trains on clean data.

The swap is process-wide: Flower's simulation runs one ClientApp call at a time per worker
process, and :class:`~flwr_tempered.runtime.local_grid.LocalGrid` runs nodes one after the
other, so no honest node's loader is affected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader

from flwr_tempered.attacks import DataPoisoningAttack

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "poison_batch", "poisoned_dataloaders"]

IMAGE_KEYS = ("img", "image", "images", "pixel_values", "x")
LABEL_KEYS = ("label", "labels", "y", "target", "targets")

_LOCK = threading.Lock()


def poison_batch(attack: DataPoisoningAttack, batch: Any) -> Any:
    """``batch`` with its images and labels replaced by ``attack.poison(images, labels)``,
    in the same container type."""
    if isinstance(batch, tuple | list) and len(batch) >= 2 and all(
            isinstance(part, Tensor) for part in batch[:2]):
        images, labels = attack.poison(batch[0], batch[1])
        rest = list(batch[2:])
        return type(batch)([images, labels, *rest]) if isinstance(batch, list) else (
            images, labels, *rest)
    if isinstance(batch, Mapping):
        image_key = next((k for k in IMAGE_KEYS if k in batch), None)
        label_key = next((k for k in LABEL_KEYS if k in batch), None)
        if image_key is not None and label_key is not None:
            images, labels = attack.poison(batch[image_key], batch[label_key])
            poisoned = dict(batch)
            poisoned[image_key] = images
            poisoned[label_key] = labels
            return poisoned
        raise ValueError(
            f"{attack.name}: cannot find images and labels in a batch with keys "
            f"{sorted(map(str, batch))}; expected one of {IMAGE_KEYS} and one of {LABEL_KEYS}"
        )
    raise ValueError(
        f"{attack.name}: cannot poison a batch of type {type(batch).__name__}; expected "
        "(images, labels) or a mapping with image and label keys"
    )


@contextmanager
def poisoned_dataloaders(attack: DataPoisoningAttack) -> Iterator[None]:
    """Within the block, every ``DataLoader`` yields batches poisoned by ``attack``."""
    with _LOCK:
        original = DataLoader.__iter__

        def poisoned_iter(loader: DataLoader) -> Iterator[Any]:
            for batch in original(loader):
                yield poison_batch(attack, batch)

        DataLoader.__iter__ = poisoned_iter  # type: ignore[assignment,method-assign]
        try:
            yield
        finally:
            DataLoader.__iter__ = original  # type: ignore[method-assign]
