"""Geometric median by smoothed Weiszfeld iterations (RFA).

K. Pillutla, S. M. Kakade, Z. Harchaoui, "Robust aggregation for federated learning",
IEEE Transactions on Signal Processing, 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import Rule, check_int_at_least, check_positive, register_rule
from .linalg import row_distances


def smoothed_weiszfeld(inputs: Tensor, iterations: int, nu: float) -> Tensor:
    """Approximate geometric median of the rows of ``inputs``: start from their mean, then
    ``iterations`` times re-weight each row by ``1 / max(||z - x_k||, nu)`` and average."""
    z = inputs.mean(dim=0)
    for _ in range(iterations):
        distances = row_distances(inputs, z)
        betas = 1.0 / torch.clamp(distances, min=nu)
        z = (betas / betas.sum()) @ inputs
    return z


@register_rule("geometric_median")
class GeometricMedian(Rule):
    """Geometric median of own and received, ``iterations`` smoothed Weiszfeld steps with
    smoothing ``nu`` (RFA with uniform input weights)."""

    def __init__(self, iterations: int = 8, nu: float = 0.1) -> None:
        super().__init__()
        check_int_at_least("geometric_median", "iterations", iterations, 1)
        check_positive("geometric_median", "nu", nu)
        self.iterations = iterations
        self.nu = nu

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        return smoothed_weiszfeld(stack_with_own(own, received), self.iterations, self.nu)
