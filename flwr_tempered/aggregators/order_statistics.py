"""Coordinate-wise order-statistic rules: median and trimmed mean.

D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust distributed learning:
towards optimal statistical rates", ICML 2018. Decentralized use takes the statistics over
own plus received.

On CPU the selection runs through ``numpy.partition`` (introselect, linear time per
coordinate), several times faster than a full sort; on other devices through ``torch.sort``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import Rule, check_int_at_least, register_rule


def _partitioned(inputs: Tensor, kth: int) -> Tensor:
    """``inputs`` rearranged along dim 0 so that row ``kth`` holds that order statistic,
    smaller-or-equal values before it and larger-or-equal after (``numpy.partition``)."""
    if inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64):
        # One kth at a time: numpy's multi-kth partition is several times slower.
        return torch.from_numpy(np.partition(inputs.detach().numpy(), kth, axis=0))
    return torch.sort(inputs, dim=0).values


def coordinate_median(inputs: Tensor) -> Tensor:
    """Coordinate-wise median of the rows of ``inputs``; with an even count, the mean of
    the two middle values (as ``numpy.median``)."""
    n = inputs.shape[0]
    if n == 1:
        return inputs[0].clone()
    ordered = _partitioned(inputs, n // 2)
    if n % 2 == 1:
        return ordered[n // 2]
    return 0.5 * (ordered[: n // 2].max(dim=0).values + ordered[n // 2])


def coordinate_trimmed_mean(inputs: Tensor, b: int) -> Tensor:
    """Per coordinate, drop the ``b`` largest and ``b`` smallest rows and average the rest."""
    n = inputs.shape[0]
    if b == 0:
        return inputs.mean(dim=0)
    without_largest = _partitioned(inputs, n - b)[: n - b]
    return _partitioned(without_largest, b - 1)[b:].mean(dim=0)


@register_rule("median")
class Median(Rule):
    """Coordinate-wise median of own and the received vectors."""

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        return coordinate_median(stack_with_own(own, received))


@register_rule("trimmed_mean")
class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean over own and received: drop the ``b`` largest and ``b``
    smallest values of each coordinate (needs ``2b < k + 1``)."""

    def __init__(self, b: int) -> None:
        super().__init__()
        check_int_at_least("trimmed_mean", "b", b, 0)
        self.b = b

    def check_input_count(self, k: int) -> None:
        if 2 * self.b >= k + 1:
            raise ValueError(
                f"{self.name}: needs 2b < k + 1 (own plus received), got b = {self.b}, "
                f"k + 1 = {k + 1}"
            )

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        b = max(self.b - rejected, 0)
        return coordinate_trimmed_mean(stack_with_own(own, received), b)
