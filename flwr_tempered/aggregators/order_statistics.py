"""Coordinate-wise order-statistic rules: median, trimmed mean and mean around the median.

Median and trimmed mean: D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust
distributed learning: towards optimal statistical rates", ICML 2018. Mean around the
median (MeaMed): C. Xie, O. Koyejo, I. Gupta, "Generalized Byzantine-tolerant SGD",
arXiv:1802.10116, 2018. Decentralized use takes the statistics over own plus received.

On CPU the selection runs through ``numpy.partition`` (introselect, linear time per
coordinate), several times faster than a full sort; on other devices through ``torch.sort``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from .averaging import stack_with_own
from .base import HonestMajorityRule, Rule, check_int_at_least, register_rule

#: Below this many coordinates a selection runs on one thread.
PARALLEL_MIN_COLUMNS = 1 << 18
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _by_column_blocks(columns: int, work: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """``work(lo, hi)`` over blocks of columns in parallel threads (numpy releases the GIL
    while it selects), the results joined along their last axis."""
    threads = torch.get_num_threads()
    if threads <= 1 or columns < PARALLEL_MIN_COLUMNS:
        return work(0, columns)
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="flwr-tempered")
    bounds = np.linspace(0, columns, threads + 1).astype(int).tolist()
    return np.concatenate(list(_POOLS[threads].map(work, bounds[:-1], bounds[1:])), axis=-1)


def _uses_numpy(inputs: Tensor) -> bool:
    return inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64)


def _partitioned(inputs: Tensor, kth: int) -> Tensor:
    """``inputs`` rearranged along dim 0 so that row ``kth`` holds that order statistic,
    smaller-or-equal values before it and larger-or-equal after (``numpy.partition``)."""
    if not _uses_numpy(inputs):
        return torch.sort(inputs, dim=0).values
    array = inputs.detach().numpy()

    def partition(lo: int, hi: int) -> np.ndarray:
        # One kth at a time: numpy's multi-kth partition is several times slower.
        return np.partition(array[:, lo:hi], kth, axis=0)

    return torch.from_numpy(_by_column_blocks(array.shape[1], partition))


def mean_of_closest(inputs: Tensor, centre: Tensor, count: int) -> Tensor:
    """Per coordinate, the mean of the ``count`` rows whose values lie closest to
    ``centre`` (Bulyan's second stage)."""
    if not _uses_numpy(inputs):
        closest = (inputs - centre).abs().topk(count, dim=0, largest=False).indices
        return inputs.gather(0, closest).mean(dim=0)
    values = inputs.detach().numpy()
    reference = centre.detach().numpy()

    def closest_mean(lo: int, hi: int) -> np.ndarray:
        block = values[:, lo:hi]
        distance = np.abs(block - reference[lo:hi])
        order = np.argpartition(distance, count - 1, axis=0)[:count]
        return np.take_along_axis(block, order, axis=0).mean(axis=0)

    return torch.from_numpy(_by_column_blocks(values.shape[1], closest_mean))


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


@register_rule("meamed")
class MeanAroundMedian(HonestMajorityRule):
    """MeaMed: per coordinate, the mean of the ``n - f`` values closest to the coordinate-wise
    median, over own and received (needs ``n >= 2f + 1``). Which of two values equally far
    from the median is kept is unspecified (one of them, per coordinate)."""

    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        inputs = stack_with_own(own, received)
        kept = inputs.shape[0] - self.budget(rejected)
        self.stats.update(selected=float(kept))
        return mean_of_closest(inputs, coordinate_median(inputs), kept)
