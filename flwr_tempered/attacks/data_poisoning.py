"""Data-poisoning attacks: label flipping and a patch backdoor.

The Byzantine node trains honestly on poisoned batches and sends the resulting model.
:func:`triggered_test_set` builds the evaluation set for a backdoor's attack success rate.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import (
    DataPoisoningAttack,
    check_batch,
    check_choice,
    check_finite,
    check_int,
    register_attack,
)


@register_attack("label_flip")
class LabelFlip(DataPoisoningAttack):
    """Relabel every sample ``y -> num_classes - 1 - y``; images are unchanged.

    A classic data-poisoning baseline (e.g. Fang et al., USENIX Security 2020; Tolpegin et
    al., "Data poisoning attacks against federated learning systems", ESORICS 2020).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        check_int(self.name, "num_classes", num_classes, 2)
        self.num_classes = num_classes

    def poison(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_batch(self.name, images, labels)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return images.clone(), (self.num_classes - 1) - labels


@register_attack("backdoor")
class Backdoor(DataPoisoningAttack):
    """Patch backdoor: stamp a ``size x size`` square trigger in a corner of a ``fraction``
    of each batch and relabel those samples to ``target_label``.

    Gu, Dolan-Gavitt, Garg, "BadNets", 2017; Bagdasaryan et al., "How to backdoor federated
    learning", AISTATS 2020. Exactly ``round(fraction * B)`` samples per batch are chosen at
    random (instance generator, ``seed``). The trigger pixels, in every channel, are set to
    ``value``, or to the batch's maximum when ``value`` is ``None``; pass a fixed ``value``
    (e.g. the normalised white level) to get the same trigger on train and test batches.
    """

    TRIGGERS: ClassVar[tuple[str, ...]] = ("square",)
    CORNERS: ClassVar[tuple[str, ...]] = ("bottom_right", "bottom_left", "top_right", "top_left")

    def __init__(self, trigger: str = "square", target_label: int = 0, size: int = 3,
                 value: float | None = None, fraction: float = 0.5,
                 corner: str = "bottom_right", seed: int = 0) -> None:
        super().__init__(seed)
        check_choice(self.name, "trigger", trigger, self.TRIGGERS)
        check_int(self.name, "target_label", target_label, 0)
        check_int(self.name, "size", size, 1)
        if value is not None:
            check_finite(self.name, "value", value)
        check_finite(self.name, "fraction", fraction, minimum=0.0)
        if fraction > 1:
            raise ValueError(f"{self.name}: fraction must lie in [0, 1], got {fraction!r}")
        check_choice(self.name, "corner", corner, self.CORNERS)
        self.trigger = trigger
        self.target_label = target_label
        self.size = size
        self.value = None if value is None else float(value)
        self.fraction = float(fraction)
        self.corner = corner

    def _window(self, height: int, width: int) -> tuple[slice, slice]:
        if self.size > height or self.size > width:
            raise ValueError(
                f"{self.name}: trigger size {self.size} does not fit images of "
                f"{height}x{width}"
            )
        rows = slice(0, self.size) if self.corner.startswith("top") else slice(
            height - self.size, height)
        cols = slice(0, self.size) if self.corner.endswith("left") else slice(
            width - self.size, width)
        return rows, cols

    def apply_trigger(self, images: Tensor) -> Tensor:
        """A copy of ``images`` (``[B, C, H, W]`` or ``[B, H, W]``) with the trigger stamped
        on every image."""
        if not isinstance(images, Tensor) or images.dim() not in (3, 4):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: images must be [B, C, H, W] or [B, H, W], got {shape}")
        rows, cols = self._window(images.shape[-2], images.shape[-1])
        out = images.clone()
        if images.shape[0] == 0:
            return out
        value = float(images.max()) if self.value is None else self.value
        out[..., rows, cols] = value
        return out

    def poison(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_batch(self.name, images, labels)
        batch = images.shape[0]
        rows, cols = self._window(images.shape[-2], images.shape[-1])
        count = int(self.fraction * batch + 0.5)
        chosen = torch.randperm(batch, generator=self.generator)[:count].to(images.device)
        out_images, out_labels = images.clone(), labels.clone()
        if count == 0:
            return out_images, out_labels
        value = float(images.max()) if self.value is None else self.value
        patch = out_images[chosen]
        patch[..., rows, cols] = value
        out_images[chosen] = patch
        out_labels[chosen] = self.target_label
        return out_images, out_labels


def triggered_test_set(images: Tensor, labels: Tensor, attack: Backdoor) -> tuple[Tensor, Tensor]:
    """The backdoor evaluation set: samples whose label is not ``attack.target_label``,
    with the trigger stamped and relabelled to the target. Accuracy on it is the attack
    success rate."""
    if not isinstance(attack, Backdoor):
        raise ValueError(f"triggered_test_set needs a Backdoor attack, got {type(attack).__name__}")
    check_batch(attack.name, images, labels)
    keep = labels != attack.target_label
    kept = images[keep]
    triggered = attack.apply_trigger(kept)
    return triggered, torch.full_like(labels[keep], attack.target_label)
