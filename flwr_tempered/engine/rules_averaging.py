"""Batched versions of the averaging and distance-based rules: mean, gossip, ClippedGossip,
centered clipping, BALANCE and MOZI.

Each class aggregates a chunk of ``R`` nodes held as padded ``[R, K, d]`` tensors and gives,
row for row, what the per-node rule object gives (:mod:`flwr_tempered.aggregators`),
statistics included. The per-node arithmetic is mirrored step by step, in the same dtype,
so results agree up to the rounding of a different summation order:

- the non-finite filter is a mask (:func:`~flwr_tempered.engine.contracts.finite_slots`):
  a rejected slot gets coefficient zero, and its weight stays on the node itself;
- distances are norms of explicit differences (as
  :func:`~flwr_tempered.aggregators.linalg.row_distances`), computed over blocks of slots
  so the temporaries stay small;
- weighted sums are one batched matrix product; the rows of the few nodes that received a
  non-finite vector are recomputed on a cleaned copy of those rows only (``0 * NaN`` is
  NaN, so a zero coefficient alone would not silence them);
- a node whose every received row was rejected keeps a copy of its own model and reports
  only the common statistics (the rule-specific ones are NaN there), as
  :meth:`~flwr_tempered.aggregators.Rule.__call__` returns before ``_aggregate``.

Comparisons against a threshold (clipping radius, BALANCE's acceptance radius, MOZI's own
loss) are done in the dtype the per-node rule compares in, so the same rows pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from flwr_tempered.aggregators import (
    Balance,
    CenteredClipping,
    ClippedGossip,
    Gossip,
    Mean,
    Mozi,
    Rule,
)
from flwr_tempered.aggregators.linalg import BLOCK_ELEMENTS

from .contracts import (
    BatchedLoss,
    BatchedRule,
    BatchedStats,
    RuleInputs,
    common_stats,
    finite_slots,
    register_batched_rule,
)

RuleT = TypeVar("RuleT", bound=Rule)


# ------------------------------------------------------------------------------ helpers
def _rule_as(rule: Rule, cls: type[RuleT]) -> RuleT:
    """``rule`` typed as ``cls`` (the per-node class a batched rule is registered for)."""
    if not isinstance(rule, cls):
        raise TypeError(f"expected a {cls.__name__} rule, got {type(rule).__name__}")
    return rule


def slot_distances(received: Tensor, points: Tensor) -> Tensor:
    """``Tensor[R, K]``: ``||received[r, j] - points[r]||`` from explicit differences (no
    Gram-matrix cancellation), over blocks of slots so that the temporary holds about
    ``BLOCK_ELEMENTS`` values. Non-finite slots give NaN or Inf; callers mask them."""
    R, K, d = received.shape
    centre = points.unsqueeze(1)
    block = max(1, BLOCK_ELEMENTS // max(R * d, 1))
    if block >= K:
        return (received - centre).norm(dim=2)
    return torch.cat(
        [(received[:, i : i + block] - centre).norm(dim=2) for i in range(0, K, block)], dim=1
    )


def weighted_slot_sum(received: Tensor, coefficients: Tensor, dirty: Tensor) -> Tensor:
    """``Tensor[R, d]``: ``sum_j coefficients[r, j] * received[r, j]`` as one batched matrix
    product. ``coefficients`` must be zero on every slot that is not kept; ``dirty``
    (``[R, K]`` bool) marks the present slots holding a non-finite vector, whose rows are
    recomputed on a copy of just those rows with the dirty slots zeroed."""
    total = torch.bmm(coefficients.unsqueeze(1), received).squeeze(1)
    rows = dirty.any(dim=1).nonzero().squeeze(1)
    if rows.numel():
        clean = received[rows].masked_fill_(dirty[rows].unsqueeze(2), 0.0)
        total[rows] = torch.bmm(coefficients[rows].unsqueeze(1), clean).squeeze(1)
    return total


def clip_scales(norms: Tensor, tau: Tensor | float) -> Tensor:
    """Factors ``min(1, tau / ||v||)`` (as :func:`~flwr_tempered.aggregators.clipping.
    clip_scales`), with ``tau`` a number or a tensor that broadcasts against ``norms``."""
    tiny = torch.finfo(norms.dtype).tiny
    return torch.clamp(tau / torch.clamp(norms, min=tiny), max=1.0)


def clipped_slot_step(
    received: Tensor, dirty: Tensor, kept: Tensor, centre: Tensor, coefficients: Tensor,
    tau: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """Batched :func:`~flwr_tempered.aggregators.clipping.clipped_step`: ``sum_j c_j *
    clip(x_j - centre, tau)`` per row (``Tensor[R, d]``) and which kept slots were clipped
    (``Tensor[R, K]`` bool), as ``(c * s) @ x - sum(c * s) * centre``."""
    norms = slot_distances(received, centre)
    scaled = torch.where(kept, coefficients * clip_scales(norms, tau), 0.0)
    step = weighted_slot_sum(received, scaled, dirty) - scaled.sum(dim=1, keepdim=True) * centre
    return step, kept & (norms > tau)


def _only_where(values: Tensor, rows: Tensor) -> Tensor:
    """A statistic as ``Tensor[R]`` float64, NaN outside ``rows`` (where the per-node rule
    did not reach ``_aggregate`` and so did not set it)."""
    values = values.double()
    return torch.where(rows, values, torch.full_like(values, math.nan))


class _Prepared:
    """What every rule here derives from its inputs first: the kept (finite, present)
    slots, the dirty ones, counts, and the kept slots' weights in own's dtype."""

    def __init__(self, inputs: RuleInputs) -> None:
        own = inputs.own
        self.own = own
        self.received = inputs.received.to(own.dtype)
        self.kept = finite_slots(self.received, inputs.present)
        self.dirty = inputs.present & ~self.kept
        #: Kept rows per node (``received.shape[0]`` in the per-node ``_aggregate``).
        self.count = self.kept.sum(dim=1)
        #: ``rejected`` of the per-node ``_aggregate``: non-finite plus refused.
        self.rejected = self.dirty.sum(dim=1) + inputs.refused.to(self.count.device)
        #: Nodes that reach ``_aggregate`` (at least one kept row).
        self.aggregated = self.count > 0
        weights = inputs.weights.to(device=own.device, dtype=own.dtype)
        self.own_weight = weights[:, 0]
        self.slot_weights = torch.where(self.kept, weights[:, 1:], 0.0)
        self.stats = common_stats(inputs, self.kept)

    def finish(self, result: Tensor) -> Tensor:
        """``result`` where the node aggregated, a copy of own where every row was
        rejected."""
        return torch.where(self.aggregated.unsqueeze(1), result, self.own).to(self.own.dtype)


# -------------------------------------------------------------------------------- rules
@register_batched_rule(Mean)
class BatchedMean(BatchedRule):
    """:class:`~flwr_tempered.aggregators.Mean` with weights: the weighted average over own
    and the kept rows, normalised by their total weight (own kept where that is zero)."""

    gathers: ClassVar[bool] = False

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        total = p.own_weight + p.slot_weights.sum(dim=1)
        mixed = p.own_weight.unsqueeze(1) * p.own + weighted_slot_sum(
            p.received, p.slot_weights, p.dirty)
        result = torch.where((total > 0).unsqueeze(1), mixed / total.unsqueeze(1), p.own)
        return p.finish(result), p.stats


@register_batched_rule(Gossip)
class BatchedGossip(BatchedRule):
    """:class:`~flwr_tempered.aggregators.Gossip`: ``(1 - sum_j W_ij) x_i + sum_j W_ij x_j``
    over the kept rows, so a rejected neighbour's weight stays on the node."""

    gathers: ClassVar[bool] = False

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        own_weight = 1.0 - p.slot_weights.sum(dim=1, keepdim=True)
        result = own_weight * p.own + weighted_slot_sum(p.received, p.slot_weights, p.dirty)
        return p.finish(result), p.stats


@register_batched_rule(ClippedGossip)
class BatchedClippedGossip(BatchedRule):
    """:class:`~flwr_tempered.aggregators.ClippedGossip` with the mixing weights: a fixed
    ``tau``, or the adaptive oracle radius per node (``tau=None``, with or without
    ``delta``). Statistics ``clipped`` and ``tau``."""

    gathers: ClassVar[bool] = False

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        super().__init__(rule, num_nodes, device, loss)
        self.params = _rule_as(rule, ClippedGossip)

    def adaptive_radius(self, p: _Prepared, distances: Tensor) -> Tensor:
        """``Tensor[R]`` (own's dtype): :meth:`ClippedGossip.adaptive_radius` per row. The
        kept slots are ordered by decreasing distance (rejected and padded slots last, with
        weight zero), the farthest ones whose cumulative weight stays within ``delta`` are
        presumed Byzantine and ``tau^2 = sum_{rest} W_ij d_ij^2 / delta``; with
        ``adaptive="second_largest"``, the second-largest kept distance (the largest
        where one slot is kept)."""
        if self.params.adaptive == "second_largest":
            return second_largest_kept(p.kept, distances)
        weights = p.slot_weights
        if self.params.delta is None:
            # Kept weights are >= 0 and the others zero: the row maximum is the kept one.
            delta: Tensor | float = weights.amax(dim=1)
            delta_bound = weights.amax(dim=1).double()
        else:
            delta = self.params.delta
            delta_bound = torch.full_like(weights[:, 0], delta, dtype=torch.float64)
        order = torch.argsort(torch.where(p.kept, distances, -math.inf), dim=1,
                              descending=True)
        sorted_weights = weights.gather(1, order)
        sorted_distances = torch.where(p.kept, distances, 0.0).gather(1, order)
        cumulative = torch.cumsum(sorted_weights.double(), dim=1)
        eps = torch.finfo(weights.dtype).eps
        slack = (p.count.double() + 1.0) * eps
        presumed_byzantine = cumulative <= (delta_bound + slack).unsqueeze(1)
        honest = p.kept.gather(1, order) & ~presumed_byzantine
        spread = torch.where(honest, sorted_weights * sorted_distances**2, 0.0).sum(dim=1)
        radius = torch.sqrt(spread / delta)
        return torch.where(delta_bound > 0.0, radius, math.inf)

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        tau: Tensor | float
        if self.params.tau is None:
            tau_rows = self.adaptive_radius(p, slot_distances(p.received, p.own))
            tau = tau_rows.unsqueeze(1)
        else:
            tau = self.params.tau
            tau_rows = torch.full_like(p.own_weight, tau)
        step, clipped = clipped_slot_step(p.received, p.dirty, p.kept, p.own, p.slot_weights,
                                          tau)
        stats = dict(p.stats)
        stats["clipped"] = _only_where(clipped.sum(dim=1), p.aggregated)
        stats["tau"] = _only_where(tau_rows, p.aggregated)
        return p.finish(p.own + step), stats


def second_largest_kept(kept: Tensor, distances: Tensor) -> Tensor:
    """``Tensor[R]``: per row, the second-largest of the kept ``distances`` (the largest
    where one is kept; ``+inf``, no clipping, where none is)."""
    masked = torch.where(kept, distances, -math.inf)
    top = torch.topk(masked, k=min(2, masked.shape[1]), dim=1).values
    count = kept.sum(dim=1)
    second = top[:, 1] if top.shape[1] > 1 else top[:, 0]
    radius = torch.where(count >= 2, second, top[:, 0])
    return torch.where(count > 0, radius, math.inf)


@register_batched_rule(CenteredClipping)
class BatchedCenteredClipping(BatchedRule):
    """:class:`~flwr_tempered.aggregators.CenteredClipping`: ``iterations`` times
    ``v <- v + mean clip(x - v, tau)`` over own and the kept rows, from each node's centre
    of its previous aggregation (its own model the first time). The centres live here, one
    row per topology position; a node whose every row was rejected keeps its old centre,
    as the per-node rule does (it never reaches ``_aggregate``)."""

    gathers: ClassVar[bool] = False

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        super().__init__(rule, num_nodes, device, loss)
        self.params = _rule_as(rule, CenteredClipping)
        #: ``Tensor[num_nodes, d]``: the centre of each position (allocated on first use).
        self.centres: Tensor | None = None
        #: ``Tensor[num_nodes]`` bool: the position has a centre.
        self.has_centre: Tensor | None = None

    def reset(self) -> None:
        """Forget every centre (as :meth:`CenteredClipping.reset` per node)."""
        self.centres = None
        self.has_centre = None

    def state_dict(self, positions: Sequence[int]) -> dict[str, Any]:
        """The centres of ``positions`` (those that have one)."""
        if self.centres is None or self.has_centre is None:
            return {}
        rows = torch.tensor(list(positions), dtype=torch.int64, device=self.centres.device)
        return {"centres": self.centres[rows].cpu(), "has_centre": self.has_centre[rows].cpu()}

    def load_state_dict(self, state: Mapping[str, Any], positions: Sequence[int]) -> None:
        if "centres" not in state:
            return
        centres = torch.as_tensor(state["centres"])
        table, has = self._storage(centres.to(self.device))
        rows = torch.tensor(list(positions), dtype=torch.int64, device=table.device)
        table[rows] = centres.to(device=table.device, dtype=table.dtype)
        has[rows] = torch.as_tensor(state["has_centre"]).to(has.device)

    def _storage(self, own: Tensor) -> tuple[Tensor, Tensor]:
        """The centre table in own's dtype and device; a new (empty) table when the model
        size changed, as the per-node rule starts over on a centre of another shape."""
        d = own.shape[1]
        if self.centres is None or self.has_centre is None or self.centres.shape[1] != d:
            self.centres = torch.zeros(self.num_nodes, d, dtype=own.dtype, device=own.device)
            self.has_centre = torch.zeros(self.num_nodes, dtype=torch.bool, device=own.device)
        elif self.centres.dtype != own.dtype or self.centres.device != own.device:
            self.centres = self.centres.to(device=own.device, dtype=own.dtype)
            self.has_centre = self.has_centre.to(own.device)
        return self.centres, self.has_centre

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        tau = self.params.tau
        centres, has_centre = self._storage(p.own)
        nodes = inputs.nodes.to(p.own.device)
        centre = torch.where(has_centre[nodes].unsqueeze(1), centres[nodes], p.own)
        n = (p.count + 1).to(p.own.dtype)
        uniform = torch.where(p.kept, (1.0 / (p.count.double() + 1.0)).to(p.own.dtype)
                              .unsqueeze(1), 0.0)
        slot_clipped = torch.zeros_like(p.kept)
        own_clipped = torch.zeros_like(p.aggregated)
        for _ in range(self.params.iterations):
            step, was_clipped = clipped_slot_step(p.received, p.dirty, p.kept, centre, uniform,
                                                  tau)
            own_offset = p.own - centre
            own_norm = own_offset.norm(dim=1)
            own_step = own_offset * clip_scales(own_norm, tau).unsqueeze(1)
            centre = centre + step + own_step / n.unsqueeze(1)
            slot_clipped |= was_clipped
            own_clipped |= own_norm > tau
        updated = nodes[p.aggregated]
        centres[updated] = centre[p.aggregated].detach()
        has_centre[updated] = True
        stats = dict(p.stats)
        clipped = slot_clipped.sum(dim=1) + own_clipped.long()
        stats["clipped"] = _only_where(clipped, p.aggregated)
        return p.finish(centre), stats


@register_batched_rule(Balance)
class BatchedBalance(BatchedRule):
    """:class:`~flwr_tempered.aggregators.Balance`: accept the kept rows within
    ``gamma * exp(-kappa t / T) * ||x_i||`` of own, ``x_i <- alpha x_i + (1 - alpha)
    mean(accepted)`` (own kept when none is). Statistics ``accepted``,
    ``acceptance_rate`` (over every input, rejected and refused ones included), ``radius``."""

    gathers: ClassVar[bool] = False

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        super().__init__(rule, num_nodes, device, loss)
        self.params = _rule_as(rule, Balance)

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        params = self.params
        decay = math.exp(-params.kappa * inputs.round / params.total_rounds)
        # As the per-node rule: the radius in float64 from own's norm, compared in own's dtype.
        radius = (params.gamma * decay) * p.own.norm(dim=1).double()
        distances = slot_distances(p.received, p.own)
        accepted = p.kept & (distances <= radius.to(p.own.dtype).unsqueeze(1))
        self.accepted_slots = accepted
        count = accepted.sum(dim=1)
        share = ((1.0 - params.alpha) / count.clamp(min=1).double()).to(p.own.dtype)
        selection = torch.where(accepted, share.unsqueeze(1), 0.0)
        mixed = params.alpha * p.own + weighted_slot_sum(p.received, selection, p.dirty)
        result = torch.where((count > 0).unsqueeze(1), mixed, p.own)
        total = (p.count + p.rejected).double()
        stats = dict(p.stats)
        stats["accepted"] = _only_where(count, p.aggregated)
        stats["acceptance_rate"] = _only_where(count.double() / total, p.aggregated)
        stats["radius"] = _only_where(radius, p.aggregated)
        return p.finish(result), stats


@register_batched_rule(Mozi)
class BatchedMozi(BatchedRule):
    """:class:`~flwr_tempered.aggregators.Mozi`: of the ``max(1, floor(rho k_total))`` kept
    rows closest to own (stable order: ties to the earlier slot), keep those whose loss is
    at most own's (none: the closest), ``x_i <- alpha x_i + (1 - alpha) mean(kept)``.

    The losses come from one call of the batched loss per chunk, on own and the closest
    rows of the nodes that aggregate (padded to the largest count with zero vectors, whose
    losses are ignored); a node whose every row was rejected is not evaluated, as the
    per-node rule never calls its loss then. Statistics ``accepted``, ``acceptance_rate``,
    ``distance_passed``."""

    gathers: ClassVar[bool] = False

    def __init__(self, rule: Rule, num_nodes: int, device: torch.device,
                 loss: BatchedLoss | None = None) -> None:
        super().__init__(rule, num_nodes, device, loss)
        self.params = _rule_as(rule, Mozi)

    def __call__(self, inputs: RuleInputs) -> tuple[Tensor, BatchedStats]:
        p = _Prepared(inputs)
        params = self.params
        stats = dict(p.stats)
        rows = p.aggregated.nonzero().squeeze(1)
        self.accepted_slots = torch.zeros_like(inputs.present)
        if rows.numel() == 0:
            return p.own.clone(), stats
        if self.loss is None:
            raise ValueError("mozi: no local loss callback; pass loss_fn= or call bind_loss()")
        own = p.own[rows]
        count = p.count[rows]
        k_total = count + p.rejected[rows]
        keep = torch.minimum(
            torch.floor(params.rho * k_total.double()).long().clamp(min=1), count)
        # Kept slots by distance, ties to the earlier slot (stable, as the per-node argsort
        # over the kept rows), then the other slots: a second stable sort on "not kept".
        kept = p.kept[rows]
        distances = torch.where(kept, slot_distances(p.received, p.own)[rows], math.inf)
        by_distance = torch.argsort(distances, dim=1, stable=True)
        not_kept = (~kept).gather(1, by_distance).to(torch.int8)
        order = by_distance.gather(1, torch.argsort(not_kept, dim=1, stable=True))
        width = int(keep.max())
        closest = order[:, :width]
        valid = torch.arange(width, device=own.device).unsqueeze(0) < keep.unsqueeze(1)
        # Gathers only the rows and slots the losses need (no copy of the whole chunk).
        picked = p.received[rows.unsqueeze(1), closest]
        picked.masked_fill_(~valid.unsqueeze(2), 0.0)
        candidates = torch.cat([own.unsqueeze(1), picked], dim=1)
        losses = self.loss(inputs.nodes[rows.to(inputs.nodes.device)], candidates)
        # The per-node rule collects the losses in a float32 tensor and compares own's loss
        # against it in float32.
        losses = losses.to(device=own.device, dtype=torch.float32)
        good = valid & (losses[:, 1:] <= losses[:, :1])
        none_good = ~good.any(dim=1)
        good[:, 0] |= none_good
        self.accepted_slots[rows.unsqueeze(1).expand_as(closest)[good], closest[good]] = True
        accepted = good.sum(dim=1)
        share = (1.0 / accepted.double()).to(own.dtype)
        mean = torch.bmm(torch.where(good, share.unsqueeze(1), 0.0).unsqueeze(1),
                         picked).squeeze(1)
        result = p.own.clone()
        result[rows] = params.alpha * own + (1.0 - params.alpha) * mean

        def scatter(values: Tensor) -> Tensor:
            full = torch.full((inputs.chunk,), math.nan, dtype=torch.float64,
                              device=values.device)
            full[rows.to(values.device)] = values.double()
            return full

        stats["accepted"] = scatter(accepted)
        stats["acceptance_rate"] = scatter(accepted.double() / k_total.double())
        stats["distance_passed"] = scatter(keep)
        return result, stats
