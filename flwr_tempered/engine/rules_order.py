"""Batched versions of the order-statistic and distance-based rules, and of bucketing.

Each class here replaces one per-node rule class (:mod:`flwr_tempered.aggregators`) for a
chunk of ``R`` nodes at once and gives, row for row, what that per-node rule object gives
on the node's own model, received rows and weights (up to float rounding), statistics
included. See :mod:`flwr_tempered.engine.contracts` for the contract.

The inputs of every node are stacked as ``[R, K + 1, d]`` (own first, then the received
slots) with a validity mask: a slot is valid when it was received and holds only finite
values, which is what the per-node non-finite filter keeps. Padded and rejected slots hold
zeros in the stacked tensor so that they never spread a NaN through a product; every
reduction masks them. Per-node counts and budgets (``n``, ``b``, ``f``, ``m``) become
``Tensor[R]`` and enter the arithmetic as gather indices or position masks, so no Python
loop runs over the nodes (bucketing's random draws aside, which replay per-node streams).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flwr_tempered.aggregators import (
    Bucketing,
    GeometricMedian,
    Krum,
    Median,
    MultiKrum,
    Rule,
    TrimmedMean,
)
from flwr_tempered.aggregators.composition import _run_inner
from flwr_tempered.aggregators.linalg import RELATIVE_PRECISION

from .contracts import (
    BatchedLoss,
    BatchedRule,
    BatchedStats,
    RuleInputs,
    batched_rule_class,
    common_stats,
    finite_slots,
    register_batched_rule,
)

#: The statistics :meth:`Rule.__call__` sets itself; a wrapper's inner rule runs through
#: ``_aggregate`` only, so these are not part of its ``inner_*`` statistics.
COMMON_STAT_KEYS = frozenset({"received", "rejected_nonfinite", "refused"})


@dataclass(frozen=True)
class Stacked:
    """A chunk's inputs after the per-node non-finite filter, own first.

    Attributes:
        values: ``Tensor[R, K + 1, d]`` (own's dtype): own then the received slots; zeros
            where a slot is padded or was rejected.
        valid: ``Tensor[R, K + 1]`` bool: own (always) and the kept slots.
        count: ``Tensor[R]`` int64: ``n``, own plus the kept received rows.
        lowered: ``Tensor[R]`` int64: rows rejected as non-finite plus ``refused``, the
            amount a per-node rule lowers its Byzantine budget by.
        empty: ``Tensor[R]`` bool: every received row was rejected (the per-node rule
            returns a copy of own and sets only the common statistics).
        stats: the common statistics (:func:`~flwr_tempered.engine.contracts.common_stats`).
    """

    values: Tensor
    valid: Tensor
    count: Tensor
    lowered: Tensor
    empty: Tensor
    stats: BatchedStats


def stack_inputs(inputs: RuleInputs) -> Stacked:
    """Apply the per-node non-finite filter to a chunk and stack own with the slots."""
    own = inputs.own
    finite = finite_slots(inputs.received, inputs.present)
    received = torch.where(finite.unsqueeze(2), inputs.received.to(own.dtype),
                           torch.zeros((), dtype=own.dtype, device=own.device))
    values = torch.cat([own.unsqueeze(1), received], dim=1)
    valid = torch.cat([torch.ones_like(finite[:, :1]), finite], dim=1)
    kept = finite.sum(dim=1)
    rejected = (inputs.present & ~finite).sum(dim=1)
    return Stacked(
        values=values,
        valid=valid,
        count=kept + 1,
        lowered=rejected + inputs.refused.to(kept.device),
        empty=kept == 0,
        stats=common_stats(inputs, finite),
    )


def keep_own_where(empty: Tensor, own: Tensor, result: Tensor) -> Tensor:
    """``result`` in own's dtype, with own's row where every received row was rejected."""
    return torch.where(empty.unsqueeze(1), own, result.to(own.dtype))


def stat_where(value: Tensor, unset: Tensor) -> Tensor:
    """A statistic as ``Tensor[R]`` float64, NaN on the rows where the rule sets no value."""
    value = value.double()
    return torch.where(unset.to(value.device), torch.full_like(value, math.nan), value)


def select_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values[r, index[r, j]]`` for ``values`` ``Tensor[R, M, d]`` and ``index``
    ``Tensor[R, J]``: ``Tensor[R, J, d]``."""
    expanded = index.unsqueeze(2).expand(-1, -1, values.shape[2])
    return torch.gather(values, 1, expanded)


def sorted_with_padding_last(stacked: Stacked) -> Tensor:
    """The stacked inputs sorted per coordinate along the input axis, invalid slots
    (replaced by ``+inf``) after every valid value: position ``i < n_r`` of row ``r``
    holds the ``i``-th smallest of that node's values."""
    infinity = torch.full((), math.inf, dtype=stacked.values.dtype,
                          device=stacked.values.device)
    padded = torch.where(stacked.valid.unsqueeze(2), stacked.values, infinity)
    return torch.sort(padded, dim=1).values


# ------------------------------------------------------------------- order statistics
@register_batched_rule(Median)
class BatchedMedian(BatchedRule):
    """Coordinate-wise median over own and the kept rows of every node.

    As :func:`~flwr_tempered.aggregators.coordinate_median`: the middle value for an odd
    count, the mean of the two middle values for an even one.
    """

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        stacked = stack_inputs(inputs)
        ordered = sorted_with_padding_last(stacked)
        n = stacked.count
        low = select_rows(ordered, ((n - 1) // 2).unsqueeze(1))[:, 0]
        high = select_rows(ordered, (n // 2).unsqueeze(1))[:, 0]
        odd = (n % 2 == 1).unsqueeze(1)
        median = torch.where(odd, high, 0.5 * (low + high))
        return keep_own_where(stacked.empty, inputs.own, median), stacked.stats


@register_batched_rule(TrimmedMean)
class BatchedTrimmedMean(BatchedRule):
    """Coordinate-wise trimmed mean: per node, the mean of the values left after dropping
    the ``b`` smallest and ``b`` largest, with ``b`` lowered by the rows rejected and
    refused.

    No sort: a sort along the short input axis of ``[R, K + 1, d]`` costs more than the
    rest of a round on a CPU. The ``b``-th smallest (``lo``) and ``b``-th largest (``hi``)
    values come from a selection network over the slots (``O(K b)`` elementwise min/max
    on ``[R, d]`` slices), and the trimmed sum is ``sum(clamp(x, lo, hi)) - b lo - b hi``:
    clamping sends the ``b`` values at or below ``lo`` to ``lo`` and those at or above
    ``hi`` to ``hi``, ties included. The clamped values are summed relative to the node's
    own model, so the subtraction cancels only differences of the size of the spread,
    never a Byzantine magnitude.
    """

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        rule = self.rule
        assert isinstance(rule, TrimmedMean)
        own = inputs.own
        finite = finite_slots(inputs.received, inputs.present)
        stats = common_stats(inputs, finite)
        kept = finite.sum(dim=1)
        lowered = (inputs.present & ~finite).sum(dim=1) + inputs.refused.to(kept.device)
        b = (rule.b - lowered).clamp(min=0)
        valid = torch.cat([torch.ones_like(finite[:, :1]), finite], dim=1)
        scrub = bool((inputs.present & ~finite).any())
        zero = torch.zeros((), dtype=own.dtype, device=own.device)

        def slot(j: int) -> Tensor:
            if j == 0:
                return own
            values = inputs.received[:, j - 1].to(own.dtype)
            # A rejected row may hold NaN, which no padding value can mask.
            return torch.where(finite[:, j - 1 : j], values, zero) if scrub else values

        lo, hi = order_statistics_from_ends(slot, valid, b, rule.b)
        trimmed = torch.zeros_like(own)
        mask = valid.to(own.dtype)
        for j in range(valid.shape[1]):
            clamped = torch.clamp(slot(j) - own, lo - own, hi - own)
            trimmed.addcmul_(clamped, mask[:, j : j + 1])
        b_column = b.unsqueeze(1)
        # b = 0 leaves lo = -inf and hi = +inf; the correction is then zero, not NaN.
        ends = torch.where(b_column > 0, b_column.to(own.dtype) * (lo + hi - 2 * own), zero)
        count = (kept + 1 - 2 * b).clamp(min=1).to(own.dtype).unsqueeze(1)
        return keep_own_where(kept == 0, own, own + (trimmed - ends) / count), stats


def order_statistics_from_ends(
    slot: Callable[[int], Tensor], valid: Tensor, b: Tensor, b_max: int
) -> tuple[Tensor, Tensor]:
    """Per node and coordinate, the ``b[r]``-th smallest and ``b[r]``-th largest of the
    valid slots' values (``-inf`` and ``+inf`` where ``b[r] = 0``), for ``b <= b_max``.

    ``slot(j)`` gives slot ``j``'s values ``Tensor[R, d]`` (finite); ``valid`` is
    ``Tensor[R, S]``. Each side keeps its ``b_max`` extreme values sorted and inserts the
    slots one by one (a min/max exchange per level), so the cost is ``O(S b_max)``
    elementwise operations on ``[R, d]`` and no sort.
    """
    first = slot(0)
    infinity = torch.full((), math.inf, dtype=first.dtype, device=first.device)
    if b_max == 0:
        return (-infinity).expand_as(first), infinity.expand_as(first)
    skip_low = torch.where(valid, torch.zeros((), dtype=first.dtype, device=first.device),
                           infinity)
    smallest = [infinity.expand_as(first)] * b_max
    largest = [(-infinity).expand_as(first)] * b_max
    for j in range(valid.shape[1]):
        values = first if j == 0 else slot(j)
        for side, kept, pick, other in ((skip_low, smallest, torch.minimum, torch.maximum),
                                        (-skip_low, largest, torch.maximum, torch.minimum)):
            candidate = values + side[:, j : j + 1]
            for level in range(b_max - 1):
                kept[level], candidate = (pick(kept[level], candidate),
                                          other(kept[level], candidate))
            kept[-1] = pick(kept[-1], candidate)
    index = (b - 1).clamp(min=0)
    rows = torch.arange(first.shape[0], device=first.device)
    none = (b == 0).unsqueeze(1)
    low = torch.where(none, -infinity, torch.stack(smallest)[index, rows])
    high = torch.where(none, infinity, torch.stack(largest)[index, rows])
    return low, high


# ------------------------------------------------------------------- geometric median
@register_batched_rule(GeometricMedian)
class BatchedGeometricMedian(BatchedRule):
    """Smoothed Weiszfeld iterations (RFA) for every node at once: start from the mean of
    own and the kept rows, then ``iterations`` times weight each input by
    ``1 / max(||z - x||, nu)`` (zero for invalid slots) and average."""

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        rule = self.rule
        assert isinstance(rule, GeometricMedian)
        stacked = stack_inputs(inputs)
        values = stacked.values
        mask = stacked.valid.to(values.dtype)
        z = values.sum(dim=1) / stacked.count.to(values.dtype).unsqueeze(1)
        for _ in range(rule.iterations):
            distances = (values - z.unsqueeze(1)).norm(dim=2)
            betas = mask / torch.clamp(distances, min=rule.nu)
            coefficients = betas / betas.sum(dim=1, keepdim=True)
            z = torch.bmm(coefficients.unsqueeze(1), values)[:, 0]
        return keep_own_where(stacked.empty, inputs.own, z), stacked.stats


# ------------------------------------------------------------------------- Krum family
def centred_sq_distances(values: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
    """Squared pairwise distances of each node's inputs from a Gram matrix of the inputs
    centred at input ``centre[r]`` (``Tensor[R, n, n]``), and the squared norms of the
    centred inputs (``Tensor[R, n]``), as
    :func:`~flwr_tempered.aggregators.pairwise_sq_distances` computes them per node."""
    centred = values - select_rows(values, centre.unsqueeze(1))
    gram = torch.bmm(centred, centred.transpose(1, 2))
    # Exactly symmetric, so that mutual nearest inputs tie exactly (Krum with
    # ``n - f - 2 = 1``) and the stable order settles the tie as the per-node rule does.
    gram = 0.5 * (gram + gram.transpose(1, 2))
    sq_norms = gram.diagonal(dim1=1, dim2=2)
    dist = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(2) - 2.0 * gram
    eye = torch.eye(values.shape[1], dtype=torch.bool, device=values.device)
    dist = dist.masked_fill(eye, 0.0).clamp(min=0.0)
    return dist, sq_norms


def batched_sq_distances(values: Tensor, valid: Tensor) -> Tensor:
    """Squared pairwise distances between each node's valid inputs (``Tensor[R, n, n]``;
    entries involving an invalid slot are meaningless and must be masked by the caller).

    Centred at own first; the nodes whose distances float rounding could distort by more
    than ``RELATIVE_PRECISION`` are recomputed around their medoid (the valid input with
    the smallest sum of distances), as the per-node helper does.
    """
    dist, sq_norms = centred_sq_distances(values, torch.zeros_like(valid[:, 0],
                                                                   dtype=torch.long))
    pairs = valid.unsqueeze(1) & valid.unsqueeze(2)
    eye = torch.eye(values.shape[1], dtype=torch.bool, device=values.device)
    eps = torch.finfo(values.dtype).eps
    tiny = torch.finfo(values.dtype).tiny
    bound = 4.0 * eps * (sq_norms.unsqueeze(1) + sq_norms.unsqueeze(2))
    imprecise = (bound > RELATIVE_PRECISION * dist.clamp(min=tiny)) & pairs & ~eye
    flagged = imprecise.flatten(1).any(dim=1)
    if bool(flagged.any()):
        sums = torch.where(pairs, dist, torch.zeros((), dtype=dist.dtype,
                                                     device=dist.device)).sum(dim=2)
        sums = sums.masked_fill(~valid, math.inf)
        medoid = sums.argmin(dim=1)
        redo = flagged & (medoid != 0)
        if bool(redo.any()):
            dist = dist.clone()
            dist[redo] = centred_sq_distances(values[redo], medoid[redo])[0]
    return dist


@register_batched_rule(Krum)
@register_batched_rule(MultiKrum)
class BatchedMultiKrum(BatchedRule):
    """Multi-Krum (and Krum, ``m = 1``) for every node: per node, the mean of the ``m``
    inputs with the lowest Krum scores among own and the kept rows.

    Per node, as :class:`~flwr_tempered.aggregators.MultiKrum`: ``f`` is lowered by the
    rows rejected and refused, the score of an input sums its ``n - f - 2`` smallest
    squared distances to the other inputs (``f`` capped at ``n - 3``), ``m`` is capped at
    ``n - f``, equal scores go to the earlier input (own first, then slot order, through a
    stable sort), and a node left with fewer than three inputs keeps own.
    """

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        rule = self.rule
        assert isinstance(rule, MultiKrum)
        stacked = stack_inputs(inputs)
        values, valid, n = stacked.values, stacked.valid, stacked.count
        slots = values.shape[1]
        f = (rule.f - stacked.lowered).clamp(min=0)
        scored = n >= 3
        closest = n - torch.minimum(f, (n - 3).clamp(min=0)) - 2
        m = torch.minimum(torch.full_like(n, rule.m), n - f).clamp(min=1)

        dist = batched_sq_distances(values, valid)
        eye = torch.eye(slots, dtype=torch.bool, device=values.device)
        others = valid.unsqueeze(1) & valid.unsqueeze(2) & ~eye
        ordered = torch.sort(dist.masked_fill(~others, math.inf), dim=2).values
        positions = torch.arange(slots, device=n.device)
        counted = (positions < closest.unsqueeze(1)).unsqueeze(1)
        scores = torch.where(counted, ordered, torch.zeros((), dtype=ordered.dtype,
                                                           device=ordered.device)).sum(dim=2)
        scores = scores.masked_fill(~valid, math.inf)

        ranking = torch.argsort(scores, dim=1, stable=True)[:, : min(rule.m, slots)]
        chosen = positions[: ranking.shape[1]].unsqueeze(0) < m.unsqueeze(1)
        picked = select_rows(values, ranking)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        total = torch.where(chosen.unsqueeze(2), picked, zero).sum(dim=1)
        result = total / m.to(values.dtype).unsqueeze(1)

        keeps_own = stacked.empty | ~scored
        entered = torch.zeros_like(valid)
        entered.scatter_(1, ranking, chosen)
        self.accepted_slots = entered[:, 1:] & scored.unsqueeze(1)
        own_selected = ((ranking == 0) & chosen).any(dim=1) | ~scored
        accepted = torch.where(scored, m, torch.ones_like(m))
        stats = dict(stacked.stats)
        stats["accepted"] = stat_where(accepted, stacked.empty)
        stats["own_selected"] = stat_where(own_selected, stacked.empty)
        return keep_own_where(keeps_own, inputs.own, result), stats


# --------------------------------------------------------------------------- bucketing
@register_batched_rule(Bucketing)
class BatchedBucketing(BatchedRule):
    """Bucketing for every node: shuffle each node's kept rows into buckets of ``s``,
    average each bucket, then run the inner rule on own and the bucket means.

    The shuffles replay the per-node objects' streams exactly: one CPU generator per
    topology position, seeded with the rule's ``seed`` and drawn once per call in which
    the node keeps at least one row (one ``randperm`` per node, in a short loop; the
    averaging is batched). A bucket carries the sum of its members' mixing weights and
    the inner rule's budget is lowered by the buckets lost to rejected and refused rows.
    The inner rule runs through its own batched version when it has one, else through a
    per-position copy of the inner rule object, called as the per-node wrapper calls it.
    """

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        super().__init__(rule, num_nodes, device, loss)
        assert isinstance(rule, Bucketing)
        if rule.layout != "received":
            raise NotImplementedError("the reference layout runs through the per-node rule")
        self.bucketing = rule
        self.generators: dict[int, torch.Generator] = {}
        self.inner_batched: BatchedRule | None = None
        inner_class = batched_rule_class(rule.inner)
        if inner_class is not None:
            try:
                self.inner_batched = inner_class(rule.inner, num_nodes, device, loss)
            except NotImplementedError:
                self.inner_batched = None
        #: Per-position copies of the inner rule for the fallback (each per-node bucketing
        #: object owns its inner rule, and with it any state the inner rule keeps).
        self.inner_rules: dict[int, Rule] = {}

    def state_dict(self, positions: Sequence[int]) -> dict[str, Any]:
        """The shuffling generators of ``positions`` and the inner rule's state."""
        state: dict[str, Any] = {
            "generators": {str(p): self.generators[p].get_state() for p in positions
                           if p in self.generators},
            "inner_rules": {str(p): self.inner_rules[p].state_dict() for p in positions
                            if p in self.inner_rules},
        }
        if self.inner_batched is not None:
            state["inner"] = self.inner_batched.state_dict(positions)
        return state

    def load_state_dict(self, state: Mapping[str, Any], positions: Sequence[int]) -> None:
        for p in positions:
            if str(p) in state.get("generators", {}):
                self.generator(p).set_state(
                    torch.as_tensor(state["generators"][str(p)], dtype=torch.uint8))
            if str(p) in state.get("inner_rules", {}):
                self.inner_rule(p).load_state_dict(state["inner_rules"][str(p)])
        if self.inner_batched is not None and "inner" in state:
            self.inner_batched.load_state_dict(state["inner"], positions)

    def generator(self, position: int) -> torch.Generator:
        """The shuffling generator of ``position``, seeded as the per-node rule's."""
        if position not in self.generators:
            self.generators[position] = torch.Generator().manual_seed(self.bucketing.seed)
        return self.generators[position]

    def inner_rule(self, position: int) -> Rule:
        """The fallback inner rule object of ``position`` (a fresh copy on first use)."""
        if position not in self.inner_rules:
            self.inner_rules[position] = copy.deepcopy(self.bucketing.inner)
        return self.inner_rules[position]

    def draw_orders(self, nodes: Tensor, kept: Tensor, slots: int) -> Tensor:
        """``Tensor[R, K]`` (CPU): row ``r`` starts with node ``r``'s shuffle of its
        ``kept[r]`` rows, ``randperm(kept[r])`` from its generator, and continues with
        ``kept[r], ..., K - 1`` so that every row is a permutation of ``0 .. K - 1``.
        Nodes that keep no row draw nothing, as the per-node rule never shuffles then."""
        counts = kept.cpu()
        perms = [torch.randperm(k, generator=self.generator(position))
                 for position, k in zip(nodes.cpu().tolist(), counts.tolist(), strict=True)
                 if k > 0]
        order = torch.arange(slots).repeat(counts.shape[0], 1)
        if perms:
            flat = torch.cat(perms)
            rows = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
            starts = torch.cumsum(counts, dim=0) - counts
            columns = torch.arange(flat.shape[0]) - torch.repeat_interleave(starts, counts)
            order[rows, columns] = flat
        return order

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        own = inputs.own
        device = own.device
        s = self.bucketing.s
        rows, slots, d = inputs.received.shape
        finite = finite_slots(inputs.received, inputs.present)
        stats = common_stats(inputs, finite)
        kept = finite.sum(dim=1)
        rejected = (inputs.present & ~finite).sum(dim=1)
        lowered = rejected + inputs.refused.to(kept.device)
        active = kept > 0
        buckets = (kept + s - 1) // s
        lost = (kept + lowered + s - 1) // s - buckets
        width = (slots + s - 1) // s  # the most buckets a node can have; also the dump slot

        # Bucket of each kept row, by its rank among the node's kept rows: the row at
        # shuffled position i goes to bucket i // s (``membership[order] = arange // s``).
        order = self.draw_orders(inputs.nodes, kept, slots).to(device)
        bucket_of_shuffled = (torch.arange(slots, device=device) // s).expand(rows, -1)
        by_rank = torch.empty_like(order).scatter_(1, order, bucket_of_shuffled)
        rank = (torch.cumsum(finite, dim=1) - 1).clamp(min=0)
        bucket = torch.gather(by_rank, 1, rank).masked_fill(~finite, width)

        zero = torch.zeros((), dtype=own.dtype, device=device)
        received = torch.where(finite.unsqueeze(2), inputs.received.to(own.dtype), zero)
        sums = torch.zeros(rows, width + 1, d, dtype=own.dtype, device=device)
        sums.scatter_add_(1, bucket.unsqueeze(2).expand(-1, -1, d), received)
        counts = torch.zeros(rows, width + 1, dtype=own.dtype, device=device)
        counts.scatter_add_(1, bucket, finite.to(own.dtype))
        means = sums[:, :width] / counts[:, :width].clamp(min=1).unsqueeze(2)
        weights = inputs.weights.to(own.dtype)
        grouped = torch.zeros(rows, width + 1, dtype=own.dtype, device=device)
        grouped.scatter_add_(1, bucket, torch.where(finite, weights[:, 1:], zero))
        bucket_weights = torch.cat([weights[:, :1], grouped[:, :width]], dim=1)

        result = own.clone()
        stats["buckets"] = stat_where(buckets, ~active)
        if not bool(active.any()):
            return result, stats
        used = int(buckets.max())
        inner_inputs = RuleInputs(
            nodes=inputs.nodes[active],
            own=own[active],
            received=means[active, :used],
            present=(torch.arange(used, device=device) < buckets.unsqueeze(1))[active],
            weights=bucket_weights[active, : used + 1],
            refused=lost[active],
            round=inputs.round,
        )
        inner_result, inner_stats = self.run_inner(inner_inputs)
        result[active] = inner_result.to(own.dtype)
        for key, value in inner_stats.items():
            full = torch.full((rows,), math.nan, dtype=torch.float64, device=value.device)
            full[active.to(value.device)] = value.double()
            stats[f"inner_{key}"] = full
        return result, stats

    def run_inner(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        """The inner rule on the bucket means (all finite; ``refused`` = buckets lost),
        with only the statistics the inner rule's ``_aggregate`` sets."""
        if self.inner_batched is not None:
            result, stats = self.inner_batched(inputs)
            return result, {k: v for k, v in stats.items() if k not in COMMON_STAT_KEYS}
        results = []
        per_node: list[dict[str, float]] = []
        for r, position in enumerate(inputs.nodes.tolist()):
            present = inputs.present[r]
            weights = torch.cat([inputs.weights[r, :1], inputs.weights[r, 1:][present]])
            value, row_stats = _run_inner(self.inner_rule(int(position)), inputs.own[r],
                                          inputs.received[r][present], weights,
                                          inputs.round, int(inputs.refused[r]))
            results.append(value.to(inputs.own.dtype))
            per_node.append(row_stats)
        keys = sorted({key.removeprefix("inner_") for row in per_node for key in row})
        stats = {key: torch.tensor([row.get(f"inner_{key}", math.nan) for row in per_node],
                                   dtype=torch.float64) for key in keys}
        return torch.stack(results), stats
